"""What the Python components cost an image (``nox -s bench -- pyimage``).

The default definition against the same definition with ``components: [store, supervisor]``
(``keel_image.testing.components_on``), in one run: qcow2 and /usr sizes, the build of the
stages after rootfs from empty caches (wheels and .debs cached, as in a CI rerun), the
rebuild after one supervisor source file changed (a copy of the tree, ``KEEL_SOURCE_DIR``),
and boots to SSH alternating between the two images, with the daemons' RSS in the guest.
Timings on a shared machine are noisy; nothing is asserted.

Options: ``--no-boot``; ``--boots N`` boots of each image (default 2).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from keel_harness import Machine
from keel_harness.run import HarnessRun
from keel_image import build
from keel_image.cache import StageCache
from keel_image.testing import components_on

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "images" / "keel.yaml"
COMPONENTS = components_on("store", "supervisor")
DAEMONS = ("keel-store.service", "keel-supervisor.service")


def main(argv: list[str]) -> int:
    """Sizes, builds and boots of the default and the [store, supervisor] image."""
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="keel-bench-py-") as tmp:
        out = Path(tmp)
        plain = build(DEFINITION, out_dir=out / "plain", progress=False)
        start = time.monotonic()
        py = build(DEFINITION, out_dir=out / "py", progress=False, extra_plugins=COMPONENTS)
        print(f"  [store, supervisor] build (cache as found) {time.monotonic() - start:8.1f} s")
        for label, key in (("qcow2", None), ("/usr filesystem", "usr")):
            a = (
                plain.disk_qcow2.stat().st_size
                if key is None
                else plain.manifest[key]["filesystem_bytes"]
            )
            b = (
                py.disk_qcow2.stat().st_size
                if key is None
                else py.manifest[key]["filesystem_bytes"]
            )
            print(f"  {label:<28} default {a / 1e6:6.1f} MB, [store, supervisor] {b / 1e6:6.1f} MB"
                  f" (+{(b - a) / 1e6:.1f} MB, x{b / a:.2f})")  # fmt: skip
        _after_rootfs(py.manifest["stages"]["rootfs"], out)
        _one_source_changed(out)
        if "--no-boot" not in argv:
            _boots(plain.disk_qcow2, py.disk_qcow2, out, _count(argv))
    return 0


def _after_rootfs(rootfs_key: str, out: Path) -> None:
    shared = StageCache()
    cache = StageCache(out / "cache")
    (cache.root / "stages" / "rootfs").mkdir(parents=True)
    os.symlink(shared.path("rootfs", rootfs_key), cache.path("rootfs", rootfs_key))
    for name in ("wheels", "python-build"):
        os.symlink(shared.root / name, cache.root / name)
    start = time.monotonic()
    build(DEFINITION, out_dir=out / "cold", progress=False, cache=cache, extra_plugins=COMPONENTS)
    print(f"  {'stages after rootfs, empty':<28} {time.monotonic() - start:8.1f} s")
    shutil.rmtree(out / "cache")


def _one_source_changed(out: Path) -> None:
    src = out / "src"
    skip = shutil.ignore_patterns("__pycache__", "tests", "*.egg-info")
    for part in ("components", "platforms"):
        shutil.copytree(ROOT / part, src / part, ignore=skip)
    shutil.copy(ROOT / "constraints.txt", src)
    plugin = src / "components/supervisor/src/keel_supervisor/plugin.py"
    plugin.write_text(plugin.read_text() + f"\n# bench {time.time_ns()}\n")
    os.environ["KEEL_SOURCE_DIR"] = str(src)
    try:
        start = time.monotonic()
        build(DEFINITION, out_dir=out / "touched", progress=False, extra_plugins=COMPONENTS)
        took = time.monotonic() - start
    finally:
        del os.environ["KEEL_SOURCE_DIR"]
    print(f"  {'rebuild, one .py changed':<28} {took:8.1f} s  target 15 s (x{took / 15:.2f})")


def _count(argv: list[str]) -> int:
    if "--boots" not in argv:
        return 2
    i = argv.index("--boots")
    if i + 1 >= len(argv) or not argv[i + 1].isdigit() or int(argv[i + 1]) < 1:
        raise SystemExit("bench_pyimage: --boots needs a whole number of boots, at least 1")
    return int(argv[i + 1])


def _boots(plain: Path, py: Path, out: Path, boots: int) -> None:
    run = HarnessRun(out / "harness")
    seconds: dict[str, list[float]] = {"default": [], "[store, supervisor]": []}
    for n in range(boots):
        for label, disk in (("default", plain), ("[store, supervisor]", py)):
            name = f"bench-py-{len(seconds[label])}-{n}-{'py' if disk == py else 'plain'}"
            config = dataclasses.replace(run.config(name), cpus=2, image=disk)
            machine = Machine(config, out / f"vm-{name}")
            load = os.getloadavg()[0]
            rss = ""
            try:
                machine.start()
                seconds[label].append(machine.wait_for_ssh())
                split = machine.succeed("systemd-analyze | head -1").strip()
                if disk == py:
                    parts = []
                    for unit in DAEMONS:
                        machine.wait_for_unit(unit)
                        pid = machine.succeed(f"systemctl show -p MainPID --value {unit}").strip()
                        kib = machine.succeed(f"grep VmRSS /proc/{pid}/status").split()[1]
                        parts.append(f"{unit.removesuffix('.service')} {int(kib) / 1024:.0f} MiB")
                    rss = "; RSS " + ", ".join(parts)
            finally:
                machine.stop()
            split = split.removeprefix("Startup finished in ")
            print(f"    {label} boot {n + 1}: {seconds[label][-1]:.1f} s to SSH, load {load:.1f}; "
                  f"systemd: {split}{rss}")  # fmt: skip
    a = statistics.median(seconds["default"])
    b = statistics.median(seconds["[store, supervisor]"])
    print(f"  boot to SSH ({run.accel}, median) default {a:.1f} s, [store, supervisor] {b:.1f} s"
          f" (x{b / a:.2f})")  # fmt: skip
    shutil.rmtree(out / "harness", ignore_errors=True)
