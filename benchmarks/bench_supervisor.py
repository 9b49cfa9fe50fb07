"""Container start latency: Keel's supervisor against bare ``runc run`` of the same bundle.

"Start latency" is the time from the command to the container's process running: for
runc, ``runc run --detach`` returning (it returns once the process was started); for the
supervisor, ``Supervisor.run`` returning (it returns once the container's monitor reports
that runc started the process), the same request through the daemon's API socket, and
the ``keel run`` command (a new process: interpreter, imports, one API request). The bare
runs are timed as commands too (``subprocess.run``), so the ``keel run`` comparison is
command against command.

The supervisor's time includes everything it does per container that the bare run does
not: the container's directory, overlay mount, bundle, network namespace and monitor
process. Two bare runs are timed, interleaved with the supervisor's:

* *fresh bundle*: a bundle the supervisor prepared (untimed) for a new container, as each
  of its own starts has: a new overlay whose upper layer is empty, so runc creates its
  mount points there (``/etc/hosts``: a copy-up of ``/etc``). This is the same work runc
  does in a supervisor start, and the ratio of record.
* *reused bundle*: one bundle run again and again (what this bench measured before
  2026-12): runc finds its mount points made by the previous run, so it does a little
  less than in any real first start.

Runs are interleaved and the medians compared; the target is a ratio of at most 1.3.
Needs root, runc and busybox-static.

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


def runc_run(runc_root: Path, bundle: Path, name: str) -> float:
    """Wall time of ``runc run --detach`` as a command (then the container is deleted)."""
    started = time.perf_counter()
    subprocess.run(
        ["runc", "--root", str(runc_root), "run", "--detach", "--bundle", str(bundle), name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    elapsed = time.perf_counter() - started
    subprocess.run(
        ["runc", "--root", str(runc_root), "delete", "--force", name],
        capture_output=True,
        check=False,
    )
    return elapsed


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
        keel_cli = [str(Path(sys.executable).with_name("keel")), "run", "--rootfs"]
        keel_cli += ["--network", "none", str(rootfs), "sleep", "300"]
        cli_env = {**os.environ, "KEEL_SUPERVISOR_SOCKET": str(settings.socket)}
        keel: list[float] = []
        api: list[float] = []
        cli: list[float] = []
        bare: list[float] = []
        reused: list[float] = []
        loads = [os.getloadavg()]
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

            settle(sup)
            started = time.perf_counter()
            subprocess.run(keel_cli, env=cli_env, capture_output=True, check=True)
            cli.append(time.perf_counter() - started)
            for other in sup.ids():
                if other != template:
                    sup.remove(other, force=True)

            # Bare runc on a fresh bundle the supervisor prepared for a new container.
            fresh = sup.create(config)
            sup.prepare(sup.resolve(fresh))
            settle(sup)
            bare.append(runc_run(runc_root, sup.resolve(fresh).bundle, fresh))
            sup.remove(fresh, force=True)

            settle(sup)
            reused.append(runc_run(runc_root, bundle, f"bench-{os.getpid()}-{i}"))
        loads.append(os.getloadavg())
        b = statistics.median(bare)
        print(f"runs: {runs} each, interleaved; medians (min-max); ratio to bare runc, fresh")
        for label, values in (
            ("bare runc run --detach (fresh)", bare),
            ("bare runc run --detach (reused)", reused),
            ("Supervisor.run", keel),
            ("daemon API POST /containers", api),
            ("keel run (command)", cli),
        ):
            m = statistics.median(values)
            print(
                f"  {label:32s} {m * 1000:7.1f} ms  ({min(values) * 1000:.1f}-"
                f"{max(values) * 1000:.1f})  ratio {m / b:.2f}x"
            )
        r = statistics.median(reused)
        print(
            f"ratio supervisor/bare runc: Supervisor.run {statistics.median(keel) / b:.2f}x, "
            f"API {statistics.median(api) / b:.2f}x, keel run {statistics.median(cli) / b:.2f}x "
            f"(target <= 1.3x); against the reused bundle: {statistics.median(keel) / r:.2f}x, "
            f"{statistics.median(api) / r:.2f}x, {statistics.median(cli) / r:.2f}x"
        )
        # The load of this shared machine drifts during a run; the ratio within each
        # iteration (runs seconds apart) is steadier than the ratio of the medians.
        paired = [
            f"{label} {statistics.median(v / w for v, w in zip(values, bare, strict=True)):.2f}x"
            for label, values in (("Supervisor.run", keel), ("API", api), ("keel run", cli))
        ]
        print(f"median of per-iteration ratios to bare runc (fresh): {', '.join(paired)}")
        shown = " / ".join(" ".join(f"{x:.2f}" for x in a) for a in loads)
        print(f"load average before/after: {shown}")
        return 0
    finally:
        for cid in sup.ids():
            sup.remove(cid, force=True)
        daemon.shutdown()
        sup.bridge.remove()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
