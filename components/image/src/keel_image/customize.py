"""Stage ``tree``: the root tree of the image, from the cached Debian tree.

Works on a hard-linked copy of the cached ``rootfs`` tree (cheap), so every change
here replaces files instead of writing into them. It applies the plugins'
contributions, prunes kernel modules, removes what must be made on first boot
(machine-id, SSH host keys), and moves ``/etc`` to ``/usr/share/factory/etc``: the
initramfs copies it to ROOT on first boot, so /etc defaults come from /usr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from keel_image import kmods, pylayers, tools
from keel_image.errors import BuildError
from keel_image.recipe import Recipe

STAGE = "system"
VERSION = 3


@dataclass(frozen=True)
class Tree:
    """A customized tree ready to become filesystems."""

    root: Path
    kernel_version: str
    vmlinuz: Path
    modules_kept: int
    modules_removed: int


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` as a new inode (never through a hard link into the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)
    path.chmod(mode)


def append_line(path: Path, line: str) -> None:
    """Append one line to a text file, replacing its inode."""
    old = path.read_bytes() if path.exists() else b""
    replace_file(
        path, old + line.encode() + b"\n", path.stat().st_mode & 0o7777 if path.exists() else 0o644
    )


def copy_tree(source: Path, dest: Path) -> None:
    """Hard-link copy of ``source`` to ``dest`` (``cp -al``: fast and preserves owners)."""
    tools.run(["cp", "-a", "--link", str(source), str(dest)], stage=STAGE)


def kernel_of(tree: Path) -> tuple[str, Path]:
    """The kernel version and vmlinuz installed by the kernel package."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(
            STAGE,
            f"expected exactly one kernel in /boot, found {[k.name for k in kernels]}",
            "list one kernel package in the definition's 'kernel' key",
        )
    return kernels[0].name.removeprefix("vmlinuz-"), kernels[0]


def build(
    recipe: Recipe, rootfs: Path, work: Path, python_layers: list[Path] | None = None
) -> Tree:
    """Build the customized tree under ``work/tree``; ``vmlinuz`` is moved to ``work``.

    ``python_layers`` (the ``pydeps`` and ``pykeel`` stage results) go to /usr/lib/keel/python.
    """
    tree = work / "tree"
    copy_tree(rootfs / "tree", tree)
    version, vmlinuz = kernel_of(tree)
    kernel = work / "vmlinuz"
    shutil.move(str(vmlinuz), kernel)
    for f in (tree / "boot").iterdir():
        f.unlink()

    moddir = tree / "usr/lib/modules" / version
    index = kmods.ModuleIndex(moddir)
    keep = index.closure(recipe.kernel_modules, stage=STAGE)
    kept, removed = index.prune(keep)
    tools.run(["chroot", str(tree), "/usr/sbin/depmod", version], stage=STAGE)
    _mask_absent_modprobes(tree, index, {kmods.module_name(k) for k in keep})
    _static_nodes(tree, moddir)

    _apply_contributions(recipe, tree)
    if python_layers:
        pylayers.install(tree, python_layers, STAGE)
    _bake_update_state(tree, recipe.definition.source_date_epoch)
    _clean_first_boot_state(tree)
    _os_release(recipe, tree)
    _factory_etc(tree)
    return Tree(tree, version, kernel, kept, removed)


def _apply_contributions(recipe: Recipe, tree: Path) -> None:
    for _name, f in recipe.files:
        dest = tree / f.path.lstrip("/")
        data = f.content if f.content is not None else Path(f.source or "").read_bytes()
        replace_file(dest, data, f.mode)
        if (f.owner, f.group) != ("root", "root"):
            tools.run(["chroot", str(tree), "chown", f"{f.owner}:{f.group}", f.path], stage=STAGE)
    for c in recipe.contributions:
        if c.sysusers:
            replace_file(
                tree / f"usr/lib/sysusers.d/keel-{c.name}.conf",
                ("\n".join(c.sysusers) + "\n").encode(),
            )
    disabled = sorted({u for c in recipe.contributions for u in c.disabled_units})
    _systemctl(tree, "disable", disabled)
    _systemctl(tree, "enable", sorted({u for c in recipe.contributions for u in c.units}))


def _systemctl(tree: Path, verb: str, units: list[str]) -> None:
    """``systemctl --root=tree enable|disable units``; a clear error if a unit is unknown."""
    if not units:
        return
    proc = subprocess.run(
        ["systemctl", f"--root={tree}", verb, *units],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(
            STAGE,
            f"systemctl {verb} {' '.join(units)} failed: {proc.stderr.strip()}",
            f"a contribution's units to {verb} name a unit that no file or package provides",
        )


UPDATED_STAMP = """\
# This file was created by keel-image: /etc and /var are up to date with /usr.
# systemd's ConditionNeedsUpdate= compares its time with /usr's (systemd-update-done.service(8)).
TIMESTAMP_NSEC={nsec}
"""


def _bake_update_state(tree: Path, epoch: int) -> None:
    """Do at build time what systemd's ``ConditionNeedsUpdate=`` units would do at first boot.

    The system users of every sysusers.d file (including contributions' users, such as
    ``core``), the journal's message catalog and the linker cache are made here, from the
    image's own tools in a chroot; then ``/etc/.updated`` and ``/var/.updated`` carry /usr's
    time (the epoch: every inode of /usr has it), so systemd-sysusers, ldconfig,
    journal-catalog-update and update-done skip the first boot. Under emulation they took
    about a second of CPU there, and systemd-networkd (the path to SSH) waits for sysusers.
    A /usr with a later time (an update to a newer build) makes them run again, as systemd
    means them to.
    """
    env = {"SOURCE_DATE_EPOCH": str(epoch)}
    tools.run(["chroot", str(tree), "systemd-sysusers"], stage=STAGE, env=env)
    tools.run(["chroot", str(tree), "journalctl", "--update-catalog"], stage=STAGE, env=env)
    tools.run(["chroot", str(tree), "ldconfig"], stage=STAGE, env=env)
    (tree / "var/cache/ldconfig/aux-cache").unlink(missing_ok=True)
    for d in ("etc", "var"):
        stamp = tree / d / ".updated"
        replace_file(stamp, UPDATED_STAMP.format(nsec=epoch * 1_000_000_000).encode(), 0o644)
        os.utime(stamp, (epoch, epoch))


def _clean_first_boot_state(tree: Path) -> None:
    """Remove what each machine must make itself, and build leftovers."""
    for rel in (
        "var/lib/dbus/machine-id",
        "var/cache/ldconfig/aux-cache",
        "etc/hostname",
    ):
        (tree / rel).unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for log in (tree / "var/log").rglob("*"):
        if log.is_file():
            log.unlink()
    for old in (tree / "var/lib/dpkg").glob("*-old"):
        old.unlink()
    # iconv converters for legacy charsets (8 MB): nothing in the image converts text.
    for conv in (tree / "usr/lib/x86_64-linux-gnu/gconv").glob("*.so"):
        conv.unlink()
    # systemd runs every generator before it loads a unit: each is a process linking
    # libsystemd-shared, tenths of a second under emulation. These have nothing to find in a
    # Keel image (no crypttab, integritytab or veritytab: the initramfs opens /usr; no swap
    # to resume from, no SysV scripts without units, no rc.local, no offline updates, and
    # the kernel line turns off GPT auto-discovery).
    for generator in UNUSED_GENERATORS:
        (tree / "usr/lib/systemd/system-generators" / generator).unlink(missing_ok=True)
    shutil.rmtree(tree / "usr/lib/udev/hwdb.d", ignore_errors=True)
    # udev rules for hardware a Keel machine has no use for (sound, cameras, joysticks,
    # pointers, sensors, tapes, FIDO keys, MTD flash; CD-ROM rules stay: config drives):
    # udevd parses every rules file at start and walks every rule for each of the ~240
    # devices of the coldplug, the second of the boot with the most processes.
    for rules in UNUSED_UDEV_RULES:
        (tree / "usr/lib/udev/rules.d" / rules).unlink(missing_ok=True)
    (tree / "usr/lib/udev/hwdb.bin").unlink(missing_ok=True)
    (tree / "etc/udev/hwdb.bin").unlink(missing_ok=True)
    # An empty machine-id, not a missing one: systemd makes and writes the ID at boot as
    # before, but does not take this for a "first boot" (machine-id(5)), which would run
    # `systemctl preset-all` over every unit file (1.6 s under TCG, on the path to SSH) and
    # enable units Keel does not want (ssh.socket next to ssh.service, systemd-sysext).
    # The units an image runs are the ones its contributions enable at build time.
    replace_file(tree / "etc/machine-id", b"", 0o444)


MODPROBE_INSTANCES = ("configfs", "dm_mod", "drm", "efi_pstore", "fuse", "loop")
"""The ``modprobe@<module>.service`` instances systemd's own units pull in at boot."""


def _mask_absent_modprobes(tree: Path, index: kmods.ModuleIndex, kept: set[str]) -> None:
    """Mask the modprobe@ instances for modules this image does not have.

    Each runs kmod (a process linking libcrypto, liblzma, libzstd) early in the boot, beside
    the units on the path to sshd, to load a module that was pruned: it could only fail.
    An empty unit file is a masked unit; units that want it go on without it.
    """
    for name in MODPROBE_INSTANCES:
        if name not in kept and name not in index.builtin:
            replace_file(tree / f"usr/lib/systemd/system/modprobe@{name}.service", b"")


def _static_nodes(tree: Path, moddir: Path) -> None:
    """Write kmod's static device nodes list at build time instead of at every boot.

    ``kmod-static-nodes.service`` turns the kernel's ``modules.devname`` into
    /run/tmpfiles.d/static-nodes.conf on each boot (``/dev/net/tun`` and the like, which
    load their module when opened); it was first on the path to sshd (kmod links
    libcrypto: 0.5-0.8 s under emulation). The list depends only on the kernel in /usr, so
    the same lines (kmod's format) go to /usr/lib/tmpfiles.d and the unit is masked.
    """
    lines: list[str] = []
    devname = moddir / "modules.devname"
    text = devname.read_text() if devname.exists() else ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or line.startswith("#"):
            continue
        _module, node, spec = fields
        kind, numbers = spec[0], spec[1:]
        if kind not in "cb" or ":" not in numbers:
            continue
        parent = node.rpartition("/")[0]
        made = f"d /dev/{parent} 0755 - - -"
        if parent and made not in lines:  # one line per directory: tmpfiles warns on repeats
            lines.append(made)
        lines.append(f"{kind}! /dev/{node} 0600 - - - {numbers}")
    header = "# Static device nodes of this image's kernel (kmod static-nodes), made at build.\n"
    replace_file(
        tree / "usr/lib/tmpfiles.d/static-nodes-keel.conf",
        (header + "".join(f"{line}\n" for line in lines)).encode(),
    )
    replace_file(tree / "usr/lib/systemd/system/kmod-static-nodes.service", b"")


UNUSED_UDEV_RULES = (
    "60-fido-id.rules",
    "60-persistent-alsa.rules",
    "60-persistent-storage-tape.rules",
    "60-persistent-v4l.rules",
    "60-sensor.rules",
    "70-camera.rules",
    "70-joystick.rules",
    "70-mouse.rules",
    "70-touchpad.rules",
    "75-probe_mtd.rules",
    "78-sound-card.rules",
)

UNUSED_GENERATORS = (
    "systemd-cryptsetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-veritysetup-generator",
)


def _os_release(recipe: Recipe, tree: Path) -> None:
    d = recipe.definition
    text = (
        'NAME="Keel"\n'
        "ID=keel\n"
        "ID_LIKE=debian\n"
        f'PRETTY_NAME="Keel {d.version} ({d.name})"\n'
        f"VERSION_ID={d.version}\n"
        f"IMAGE_ID={d.name}\n"
        f"IMAGE_VERSION={d.version}\n"
        f"DEBIAN_SUITE={d.suite}\n"
    )
    replace_file(tree / "usr/lib/os-release", text.encode())
    etc = tree / "etc/os-release"
    etc.unlink(missing_ok=True)
    etc.symlink_to("../usr/lib/os-release")


def _factory_etc(tree: Path) -> None:
    """Move /etc into /usr/share/factory/etc; leave the mount points ROOT needs."""
    factory = tree / "usr/share/factory"
    factory.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(factory / "etc", ignore_errors=True)
    (tree / "etc").rename(factory / "etc")
    (tree / "etc").mkdir(mode=0o755)
    for d in ("dev", "proc", "sys", "run", "tmp", "home", "root", "boot", "mnt", "srv", "opt"):
        (tree / d).mkdir(exist_ok=True)
    os.chmod(tree / "tmp", 0o1777)
    os.chmod(tree / "root", 0o700)
