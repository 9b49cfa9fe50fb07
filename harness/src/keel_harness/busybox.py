"""A seconds-to-boot guest for harness self-tests: Debian's kernel and a busybox-static initramfs.

It proves the QEMU layer without an image: start, console capture, the fw_cfg config
(the guest prints it and takes its private address from it), the private segment (it
pings the peers named on its kernel command line), power-off and crash. What it does at
the end is chosen by ``keel.then=`` (``poweroff``, ``sleep``, ``panic``, ``spin``: a
busy loop).
"""

from __future__ import annotations

import gzip
import io
import shutil
import stat
from pathlib import Path

from keel_harness.kernel import Kernel

# Load order matters (dependencies first); missing ones are built in.
MODULES = (
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
    "failover", "net_failover", "virtio_net", "qemu_fw_cfg",
)  # fmt: skip

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
echo KEEL-BUSYBOX-UP
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^keel\.$1=//p"; }
cfg=/sys/firmware/qemu_fw_cfg/by_name/opt/org.keel/config/raw
if [ -r $cfg ]; then
  echo KEEL-CONFIG-BEGIN; tr -d '\n' < $cfg; echo; echo KEEL-CONFIG-END
  addr=$(tr -d '\n' < $cfg | sed -n 's/.*"address": *"\([0-9./]*\)".*/\1/p')
  name=$(tr -d '\n' < $cfg | sed -n 's/.*"hostname": *"\([^"]*\)".*/\1/p')
  [ -n "$name" ] && hostname "$name"
fi
ip link set lo up
if [ -n "$addr" ]; then ip link set eth0 up; ip addr add "$addr" dev eth0; fi
echo "KEEL-READY $(hostname) ${addr:-none}"
for peer in $(arg peers | tr ',' ' '); do
  ok=no; i=0
  while [ $i -lt "$(arg tries)" ]; do
    if ping -c 1 -W 1 "$peer" >/tmp/ping.log 2>&1; then ok=yes; break; fi
    i=$((i+1))
  done
  if [ $ok = yes ]; then echo "PING-OK $(hostname) -> $peer"
  else cat /tmp/ping.log; echo "PING-FAIL $(hostname) -> $peer"; fi
done
echo "KEEL-DONE $(hostname)"
case "$(arg then)" in
  poweroff) poweroff -f ;;
  panic) echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger ;;
  spin) while true; do :; done ;;
  *) while true; do sleep 1; done ;;
esac
"""


def _cpio_entry(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes = b"") -> None:
    namez = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0]
    out.write(b"070701" + b"".join(f"{v:08x}".encode() for v in fields))
    out.write(namez + b"\0" * ((-(110 + len(namez))) % 4))
    out.write(data + b"\0" * ((-len(data)) % 4))


def build_initramfs(kernel: Kernel, destination: Path) -> Path:
    """Write a gzip'd newc cpio with busybox, ``/init`` and the virtio/fw_cfg modules."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed (Debian package busybox-static)")
    out = io.BytesIO()
    ino = 1
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "tmp"):
        entries.append((d, stat.S_IFDIR | 0o755, b""))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, Path(busybox).read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, INIT.encode()))
    order = []
    for name in MODULES:
        ko = kernel.module(name)
        if ko is not None:
            entries.append((f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, ko.read_bytes()))
            order.append(name)
    entries.append(("modules.order", stat.S_IFREG | 0o644, "\n".join(order).encode() + b"\n"))
    for name, mode, data in entries:
        _cpio_entry(out, ino, name, mode, data)
        ino += 1
    _cpio_entry(out, 0, "TRAILER!!!", 0)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(gzip.compress(out.getvalue(), compresslevel=1))
    return destination


def kernel_args(
    *, peers: list[str] | None = None, then: str = "sleep", tries: int = 90
) -> list[str]:
    """Kernel command line for the busybox guest: ping ``peers`` up to ``tries`` times each."""
    args = [
        "console=ttyS0",
        "no_timer_check",  # as keel_platform_qemu's guests: no spurious early-timer panic
        "panic=-1",
        "quiet",
        "loglevel=4",
        f"keel.then={then}",
        f"keel.tries={tries}",
    ]
    if peers:
        args.append("keel.peers=" + ",".join(peers))
    return args
