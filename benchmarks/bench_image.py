"""Image size, build times and boot time of the default image (``nox -s bench -- image``).

Figures, with the prototype's (research/prototype-boot.md) and the issue's targets as
context. There is no second image builder to race in the same run, so the ratios are
against the targets. Timings on a shared machine are noisy; nothing is asserted.

Options: ``--no-cold`` skips the cold build (minutes: mmdebstrap), ``--no-boot`` the boot,
``--boots N`` boots each firmware N times (default 3; the median is the figure),
``--firmware bios|uefi`` only that one, ``--compare DIR`` boots the image in DIR (an image
directory or a disk, e.g. one built from main) alternately with this tree's, boot for boot,
``--analyze`` prints systemd's critical chain to ssh.socket and its blame on the first boot.
Each boot prints the 1-minute load average at its start, the CPU time QEMU used until SSH
answered (less noisy than wall time on a shared host), systemd's own split (kernel,
userspace) and the stages seen on the console: firmware + GRUB + loading the kernel, the
kernel to /init, the initramfs to systemd.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from keel_core import hookimpl
from keel_core.schemas import ImageDefinition
from keel_core.types import FileContribution, ImageContribution
from keel_harness import Machine
from keel_harness.run import HarnessRun
from keel_image import build
from keel_image.cache import StageCache

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "images" / "keel.yaml"

PROTOTYPE = {"qcow2_mb": 112.0, "cold_s": 48.9, "boot_s": 15.0}
TARGET = {"qcow2_mb": 60.0, "cold_s": 90.0, "warm_s": 15.0, "boot_s": 10.0}


def _row(name: str, value: float, unit: str, key: str) -> None:
    target = TARGET.get(key)
    proto = PROTOTYPE.get(key)
    extra = ""
    if target:
        extra += f"  target {target:g} {unit} (x{value / target:.2f})"
    if proto:
        extra += f"  prototype {proto:g} {unit}"
    print(f"  {name:<28} {value:8.1f} {unit}{extra}")


class _Touch:
    """A plugin whose contribution changes every run: a 'one component changed' rebuild."""

    def __init__(self) -> None:
        self.stamp = str(time.time_ns()).encode()

    @hookimpl
    def keel_image_contribution(self, image: ImageDefinition) -> ImageContribution:
        """A file whose content is new on every run."""
        del image
        return ImageContribution(
            name="bench-touch", files=[FileContribution("/usr/lib/keel/bench-stamp", self.stamp)]
        )


def main(argv: list[str]) -> int:
    """Build (cold and warm), measure the qcow2, boot it to SSH."""
    touch = _Touch()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        out = Path(tmp)
        image = build(DEFINITION, out_dir=out / "default", progress=False)
        _row("qcow2 (zstd)", image.disk_qcow2.stat().st_size / 1e6, "MB", "qcow2_mb")
        usr = image.manifest["usr"]
        print(f"  /usr {usr['filesystem']} {usr['compression']}: "
              f"{usr['filesystem_bytes'] / 1e6:.1f} MB; raw disk allocated "
              f"{image.disk_raw.stat().st_blocks * 512 / 1e6:.1f} MB")  # fmt: skip
        if "--no-cold" not in argv:
            start = time.monotonic()
            build(DEFINITION, out_dir=out / "cold", progress=False,
                  cache=StageCache(out / "cache"))  # fmt: skip
            _row("cold build (empty caches)", time.monotonic() - start, "s", "cold_s")
        start = time.monotonic()
        build(DEFINITION, out_dir=out / "warm", progress=False, extra_plugins=[("touch", touch)])
        _row("rebuild, one file changed", time.monotonic() - start, "s", "warm_s")
        start = time.monotonic()
        build(DEFINITION, out_dir=out / "default", progress=False)
        print(f"  {'no change (cache hit)':<28} {time.monotonic() - start:8.1f} s")
        if "--no-boot" not in argv:
            _boot(image.disk_qcow2, out, _boots(argv), argv)
    return 0


def _option(argv: list[str], name: str) -> str | None:
    if name not in argv:
        return None
    i = argv.index(name)
    if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
        raise SystemExit(f"bench_image: {name} needs a value")
    return argv[i + 1]


def _boots(argv: list[str]) -> int:
    value = _option(argv, "--boots")
    if value is None:
        return 3
    if not value.isdigit() or int(value) < 1:
        raise SystemExit("bench_image: --boots needs a whole number of boots, at least 1")
    return int(value)


def _firmwares(argv: list[str]) -> list[str]:
    value = _option(argv, "--firmware")
    if value is None:
        return ["bios", "uefi"]
    if value not in ("bios", "uefi"):
        raise SystemExit("bench_image: --firmware is bios or uefi")
    return [value]


# Console lines that mark the stages of a boot, each seen by the host when it is written.
_MARKS = {
    "grub": re.compile(r"keel: booting slot"),
    "init": re.compile(r"\] Run /init as init process"),
    "systemd": re.compile(r"\] systemd\[1\]: "),
    "boot-ok": re.compile(r"KEEL-BOOT-OK"),
}
_PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$", re.MULTILINE)


class _Milestones:
    """Host times (since QEMU started) at which console marks first appear.

    The console is a file QEMU writes as the guest prints; a thread reads what is new every
    20 ms. The kernel's start is the host time of ``Run /init`` minus its printk time:
    what is before it is firmware, GRUB and loading (and decompressing) the kernel.
    """

    def __init__(self, console: Path, started: float) -> None:
        self.console = console
        self.started = started
        self.seen: dict[str, float] = {}
        self.printk: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        offset, text = 0, ""
        while not self._stop.wait(0.02):
            try:
                with self.console.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            if not chunk:
                continue
            now = time.monotonic() - self.started
            offset += len(chunk)
            text += chunk.decode(errors="replace")
            for name, pattern in _MARKS.items():
                if name not in self.seen:
                    found = pattern.search(text)
                    if found:
                        self.seen[name] = now
                        line = text[text.rfind("\n", 0, found.start()) + 1 :]
                        stamp = _PRINTK.match(line)
                        if stamp:
                            self.printk[name] = float(stamp.group(1))

    def stop(self) -> str:
        """Stop watching; the stages as one line."""
        self._stop.set()
        self._thread.join()
        seen = self.seen
        parts = []
        if "init" in seen and "init" in self.printk:
            kernel = seen["init"] - self.printk["init"]
            parts.append(f"firmware+grub+load {kernel:.1f}")
            parts.append(f"kernel {self.printk['init']:.1f}")
            if "systemd" in self.printk:
                parts.append(f"initramfs {self.printk['systemd'] - self.printk['init']:.1f}")
        if "grub" in seen:
            parts.append(f"(grub.cfg at {seen['grub']:.1f})")
        if "boot-ok" in seen:
            parts.append(f"(multi-user at {seen['boot-ok']:.1f})")
        return ", ".join(parts)


def _images(disk: Path, argv: list[str]) -> list[tuple[str, Path]]:
    """The image(s) to boot: this tree's, and ``--compare``'s (an image directory or disk)."""
    other = _option(argv, "--compare")
    if other is None:
        return [("", disk)]
    path = Path(other)
    if path.is_dir():
        path = next(path.glob("**/disk.qcow2"), path / "disk.qcow2")
    if not path.exists():
        raise SystemExit(f"bench_image: --compare {other}: no disk.qcow2 there")
    return [("old", path), ("new", disk)]


def _boot(disk: Path, out: Path, boots: int, argv: list[str]) -> None:
    """Boot each firmware ``boots`` times; with ``--compare``, old and new alternately."""
    run = HarnessRun(out / "harness")
    images = _images(disk, argv)
    for firmware in _firmwares(argv):
        seconds: dict[str, list[float]] = {label: [] for label, _ in images}
        for n in range(boots):
            for label, image in images:
                name = f"bench-{firmware}-{label or 'image'}-{n}"
                config = dataclasses.replace(run.config(name), cpus=2, firmware=firmware)
                machine = Machine(dataclasses.replace(config, image=image), out / f"vm-{name}")
                load = os.getloadavg()[0]
                analysis = ""
                machine.start()
                stages = _Milestones(machine.console.path, machine.started_at)
                try:
                    seconds[label].append(machine.wait_for_ssh())
                    cpu = machine.cpu_seconds()
                    split = machine.succeed("systemd-analyze | head -1").strip()
                    if "--analyze" in argv and n == 0:
                        analysis = machine.succeed(
                            "systemd-analyze critical-chain --no-pager ssh.socket; "
                            "systemd-analyze blame --no-pager | head -15"
                        )
                finally:
                    line = stages.stop()
                    machine.stop()
                split = split.removeprefix("Startup finished in ")
                who = f"{label} " if label else ""
                print(f"    {firmware} {who}boot {n + 1}: {seconds[label][-1]:.1f} s to SSH "
                      f"({cpu:.1f} QEMU CPU-s), load {load:.1f}; systemd: {split}\n"
                      f"      {line}")  # fmt: skip
                if analysis:
                    print("      " + analysis.strip().replace("\n", "\n      "))
        for label, figures in seconds.items():
            what = f"{label}, " if label else ""
            label_text = f"boot to SSH ({what}{firmware}, {run.accel}, 2 vCPU)"
            _row(label_text, statistics.median(figures), "s", "boot_s")
    shutil.rmtree(out / "harness", ignore_errors=True)
