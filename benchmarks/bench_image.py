"""Image size, build times and boot time of the default image (``nox -s bench -- image``).

Figures, with the prototype's (research/prototype-boot.md) and the issue's targets as
context. There is no second image builder to race in the same run, so the ratios are
against the targets. Timings on a shared machine are noisy; nothing is asserted.

Options: ``--no-cold`` skips the cold build (minutes: mmdebstrap), ``--no-boot`` the boot,
``--boots N`` boots each firmware N times (default 3; the median is the figure). Each boot
prints the 1-minute load average at its start and systemd's own split (kernel, userspace).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import tempfile
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
            _boot(image.disk_qcow2, out, _boots(argv))
    return 0


def _boots(argv: list[str]) -> int:
    if "--boots" not in argv:
        return 3
    i = argv.index("--boots")
    if i + 1 >= len(argv) or not argv[i + 1].isdigit() or int(argv[i + 1]) < 1:
        raise SystemExit("bench_image: --boots needs a whole number of boots, at least 1")
    return int(argv[i + 1])


def _boot(disk: Path, out: Path, boots: int) -> None:
    run = HarnessRun(out / "harness")
    for firmware in ("bios", "uefi"):
        seconds: list[float] = []
        for n in range(boots):
            name = f"bench-{firmware}-{n}"
            config = dataclasses.replace(run.config(name), cpus=2, firmware=firmware)
            machine = Machine(dataclasses.replace(config, image=disk), out / f"vm-{name}")
            load = os.getloadavg()[0]
            try:
                machine.start()
                seconds.append(machine.wait_for_ssh())
                split = machine.succeed("systemd-analyze | head -1").strip()
            finally:
                machine.stop()
            split = split.removeprefix("Startup finished in ")
            print(f"    {firmware} boot {n + 1}: {seconds[-1]:.1f} s to SSH, load {load:.1f}; "
                  f"systemd: {split}")  # fmt: skip
        label = f"boot to SSH ({firmware}, {run.accel}, 2 vCPU)"
        _row(label, statistics.median(seconds), "s", "boot_s")
    shutil.rmtree(out / "harness", ignore_errors=True)
