"""Container start latency: Keel's supervisor against bare ``runc run`` of the same bundle.

"Start latency" is the time from the command to the container's process running: for
runc, ``runc run --detach`` returning (it returns once the process was started); for the
supervisor, ``Supervisor.run`` returning (it returns once the container's monitor reports
that runc started the process) and the same request through the daemon's API socket.
The supervisor's time includes everything it does per container that the bare run does
not: the container's directory, overlay mount, bundle, network namespace and monitor
process; the bare run reuses one prepared bundle. Runs are interleaved and the medians
compared; the target is a ratio of at most 1.3. Needs root, runc and busybox-static.

    python benchmarks/run.py supervisor [--runs=N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from keel_supervisor.api import Client
from keel_supervisor.daemon import Daemon, Settings
from keel_supervisor.supervisor import Supervisor
from keel_supervisor.testing import busybox, make_busybox_rootfs

SETTLE = 0.4


def settle(sup: Supervisor) -> None:
    """Wait a little, and until the supervisor's spare monitor is loaded (at most 5 s)."""
    time.sleep(SETTLE)
    deadline = time.monotonic() + 5
    while not sup.spare_waiting() and time.monotonic() < deadline:
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    """Run the comparison; prints medians and ratios, asserts nothing."""
    runs = 30
    for arg in argv:
        if arg.startswith("--runs="):
            runs = int(arg.split("=", 1)[1])
    if os.geteuid() != 0 or shutil.which("runc") is None or not Path("/bin/busybox").exists():
        print("skipped: needs root, runc and busybox-static")
        return 0
    base = Path(tempfile.mkdtemp(prefix="keel-bench-sup-"))
    settings = Settings(
        root=base / "state",
        run_dir=base / "run",
        socket=base / "api.sock",
        apps_dir=base / "apps",
        images=base / "images",
        bridge="kbench0",
        subnet="10.199.0.0/24",
        outbound=False,
    )
    daemon = Daemon(settings)
    daemon.start_services()
    sup = daemon.supervisor
    client = Client(settings.socket)
    runc_root = base / "bare-runc"
    try:
        rootfs = make_busybox_rootfs(base / "rootfs")
        config = busybox(rootfs, "sleep", "300", network="none")
        # One prepared bundle for the bare runs: the supervisor's own, fully set up.
        template = sup.create(config)
        sup.prepare(sup.resolve(template))
        bundle = sup.resolve(template).bundle
        keel, api, bare = [], [], []
        for i in range(runs):
            # Let background work (the next spare monitor starting) settle before each
            # measurement: this is latency in steady state, not under our own load.
            settle(sup)
            started = time.perf_counter()
            cid = sup.run(config)
            keel.append(time.perf_counter() - started)
            sup.remove(cid, force=True)

            settle(sup)
            started = time.perf_counter()
            client.request("POST", "/containers", {"config": config.model_dump(mode="json")})
            api.append(time.perf_counter() - started)
            for other in sup.ids():
                if other != template:
                    sup.remove(other, force=True)

            name = f"bench-{os.getpid()}-{i}"
            settle(sup)
            started = time.perf_counter()
            subprocess.run(
                [
                    "runc",
                    "--root",
                    str(runc_root),
                    "run",
                    "--detach",
                    "--bundle",
                    str(bundle),
                    name,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            bare.append(time.perf_counter() - started)
            subprocess.run(
                ["runc", "--root", str(runc_root), "delete", "--force", name],
                capture_output=True,
                check=False,
            )
        b = statistics.median(bare)
        print(f"runs: {runs} each, interleaved; medians (min-max)")
        for label, values in (
            ("bare runc run --detach", bare),
            ("Supervisor.run", keel),
            ("daemon API POST /containers", api),
        ):
            m = statistics.median(values)
            print(
                f"  {label:30s} {m * 1000:7.1f} ms  ({min(values) * 1000:.1f}-"
                f"{max(values) * 1000:.1f})  ratio {m / b:.2f}x"
            )
        print(f"ratio supervisor/bare runc: {statistics.median(keel) / b:.2f}x (target <= 1.3x)")
        return 0
    finally:
        for cid in sup.ids():
            sup.remove(cid, force=True)
        daemon.shutdown()
        sup.bridge.remove()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
