"""keel-image's own contribution: what every Keel image has, whatever its components.

systemd with networkd, udev, dbus, OpenSSH (host keys made on first boot), sudo, the
``core`` user, the ``keel`` command with ``keel slot``, the ESP mounted on /boot, and a
console line when the machine reaches multi-user. Added through the same hook as any
component's contribution.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from keel_core.types import FileContribution, ImageContribution

if TYPE_CHECKING:
    from keel_core.schemas import ImageDefinition  # pydantic: not for every `keel` command

PACKAGES = ["dbus", "iproute2", "kmod", "openssh-server", "sudo", "systemd", "systemd-sysv", "udev"]

KERNEL_MODULES = [
    "dm_verity",
    "erofs",
    "squashfs",
    "vfat",
    "nls_cp437",
    "nls_utf8",
    "nls_ascii",
    "overlay",
    "veth",
    "bridge",
    "br_netfilter",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_compat",
    "tun",
    "autofs4",
]
"""Kernel modules every Keel machine keeps: /usr, the ESP, and container networking."""

KERNEL_ARGS = [
    "rw",
    "systemd.gpt_auto=0",
    "systemd.firstboot=off",
    "panic=10",
    "systemd.show_status=auto",
]

UNITS = [
    "systemd-networkd.service",
    "keel-boot-ok.service",
    "ssh.socket",
    "keel-growfs-root.service",
]

NETWORK_DHCP = """\
# Any Ethernet interface without a more specific .network file: DHCPv4 only.
[Match]
Type=ether

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
UseDNS=no
UseNTP=no
"""

SSHD = """\
# Keel: keys only, one ed25519 host key made on first boot.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
"""

# Early (no default dependencies: it needs only a writable /etc), so that it runs beside
# the other first-boot units instead of after basic.target, on the path to sshd.
SSH_HOSTKEYS = """\
[Unit]
Description=Make this machine's SSH host key (first boot)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
DefaultDependencies=no
After=local-fs.target
Before=ssh.socket ssh.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
"""

SSH_DROPIN = """\
[Unit]
Wants=keel-ssh-hostkeys.service
After=keel-ssh-hostkeys.service
"""

BOOT_OK = """\
[Unit]
Description=Tell the console that this machine reached multi-user
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "KEEL-BOOT-OK $(/usr/lib/keel/keel-slot current)" >/dev/console'

[Install]
WantedBy=multi-user.target
"""

FSTAB = """\
# ROOT (/, read-write) and /usr (read-only, dm-verity) are mounted by the initramfs, not
# from this file; keel-growfs-root.service grows / after systemd-repart grew ROOT.
PARTLABEL=EFI-SYSTEM /boot vfat umask=0077,noauto,nofail,x-systemd.automount 0 2
"""

# Not x-systemd.growfs in fstab: systemd's growfs@-.service is ordered before
# local-fs.target, and so before everything on the path to sshd, while growing ext4 is an
# online resize that needs to wait for nothing but systemd-repart (on first boot under TCG,
# repart and growfs held local-fs.target back by 0.3-1 s).
GROWFS_ROOT = """\
[Unit]
Description=Grow the root file system to fill its partition
Documentation=man:systemd-growfs(8)
DefaultDependencies=no
After=systemd-repart.service -.mount
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/systemd/systemd-growfs /
TimeoutSec=infinity

[Install]
WantedBy=sysinit.target
"""

REPART_ROOT = """\
# Grow ROOT (the last partition) into the free space of a bigger disk: systemd-repart at
# boot moves the backup GPT to the disk's end and enlarges the partition.
[Partition]
Type=root
"""


# sshd per connection, started by systemd on the listening socket (as Flatcar does):
# nothing to start at boot beyond the socket, which listens from sockets.target on. A
# listening sshd took 1.5 s of CPU to start under emulation, in the busiest second of the
# boot; each connection costs one sshd either way (the daemon re-executes itself for each).
# Debian's own ssh.socket (Accept=no) is replaced. ssh.service is still there, not enabled.
SSH_SOCKET = """\
[Unit]
Description=OpenBSD Secure Shell server socket (one sshd per connection)
Documentation=man:sshd(8) man:sshd_config(5)
Conflicts=ssh.service
Before=sockets.target
Wants=keel-ssh-hostkeys.service
After=keel-ssh-hostkeys.service
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Socket]
ListenStream=22
Accept=yes

[Install]
WantedBy=sockets.target
"""

SSH_PER_CONNECTION = """\
[Unit]
Description=OpenBSD Secure Shell server, one connection
Documentation=man:sshd(8) man:sshd_config(5)
After=auditd.service

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStart=-/usr/sbin/sshd -i $SSHD_OPTS
StandardInput=socket
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
"""

# Debian's ssh.service, less what holds sshd back at boot: it is not ordered after
# network.target (sshd listens on the wildcard address and needs no configured network)
# and runs no `sshd -t` before each start (one more sshd under emulation on the path to
# SSH; a broken config still fails the start, with the same message).
SSH_SERVICE = """\
[Unit]
Description=OpenBSD Secure Shell server
Documentation=man:sshd(8) man:sshd_config(5)
After=auditd.service
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/usr/sbin/sshd -t
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartPreventExitStatus=255
Type=notify
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755

[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""

USR_DEVICE_RULES = """\
# /usr is opened by Keel's initramfs, where no udev runs, so dm's rules see the device
# only at coldplug and mark it not ready. It is ready: it was mounted before systemd ran.
SUBSYSTEM=="block", KERNEL=="dm-*", ATTR{dm/uuid}=="KEEL-VERITY-USR-*", \\
  ENV{SYSTEMD_READY}="1", SYMLINK+="mapper/$attr{dm/name}"
"""

SYSUSERS = ['u core 500 "Keel user" /home/core /bin/bash']

TMPFILES = """\
d /home/core 0700 core core -
d /home/core/.ssh 0700 core core -
"""


def _guest(name: str) -> bytes:
    return (resources.files("keel_image") / "guest" / name).read_bytes()


def contribution(image: ImageDefinition) -> ImageContribution:
    """The base of every image (``image`` is not consulted: every image gets it)."""
    del image
    files = [
        FileContribution("/usr/bin/keel", _guest("keel"), mode=0o755),
        FileContribution("/usr/lib/keel/keel-slot", _guest("keel-slot"), mode=0o755),
        FileContribution("/usr/lib/systemd/network/99-keel-dhcp.network", NETWORK_DHCP.encode()),
        FileContribution("/etc/ssh/sshd_config.d/keel.conf", SSHD.encode()),
        FileContribution(
            "/usr/lib/systemd/system/keel-ssh-hostkeys.service", SSH_HOSTKEYS.encode()
        ),
        FileContribution("/usr/lib/systemd/system/ssh.service.d/keel.conf", SSH_DROPIN.encode()),
        FileContribution("/usr/lib/systemd/system/keel-boot-ok.service", BOOT_OK.encode()),
        FileContribution("/etc/fstab", FSTAB.encode()),
        FileContribution("/usr/lib/repart.d/50-keel-root.conf", REPART_ROOT.encode()),
        FileContribution("/usr/lib/systemd/system/keel-growfs-root.service", GROWFS_ROOT.encode()),
        FileContribution("/usr/lib/systemd/system/ssh.service", SSH_SERVICE.encode()),
        FileContribution("/usr/lib/systemd/system/ssh.socket", SSH_SOCKET.encode()),
        FileContribution("/usr/lib/systemd/system/ssh@.service", SSH_PER_CONNECTION.encode()),
        FileContribution("/usr/lib/udev/rules.d/99-zz-keel-usr.rules", USR_DEVICE_RULES.encode()),
        FileContribution("/etc/sudoers.d/keel-core", b"core ALL=(ALL) NOPASSWD: ALL\n", mode=0o440),
        FileContribution("/usr/lib/tmpfiles.d/keel-core.conf", TMPFILES.encode()),
    ]
    return ImageContribution(
        name="keel-base",
        packages=PACKAGES,
        files=files,
        units=UNITS,
        disabled_units=["ssh.service"],  # openssh-server enables it; ssh.socket replaces it
        kernel_args=KERNEL_ARGS,
        kernel_modules=KERNEL_MODULES,
        sysusers=SYSUSERS,
    )
