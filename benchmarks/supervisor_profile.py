"""Where a container start spends its time, beyond bare ``runc run``.

Not a ``bench_*`` module (``run.py`` does not pick it up); run it by hand, as root::

    python benchmarks/supervisor_profile.py trace [--runs=15]   # spans of one start
    python benchmarks/supervisor_profile.py floor [--runs=200]  # a no-op API request

``trace`` sets up the daemon as ``bench_supervisor`` does (network none, busybox
``sleep``), wraps the hot functions of the supervisor (this process) and of its spare
monitors (child processes started through this file, which wrap the monitor's functions
before running it) to record ``perf_counter_ns`` stamps (CLOCK_MONOTONIC, comparable
across processes), then starts containers with ``Supervisor.run`` and through the API and
prints the median time between consecutive stamps of a start. ``floor`` times ``GET
/ping`` through the same client and server, so the fixed cost of a request is known.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

Stamp = tuple[str, int]
clock = time.perf_counter_ns


def around(owner: Any, name: str, stamps: list[Stamp], label: str | None = None) -> None:
    """Record ``<label> >`` before and ``<label> <`` after every call of ``owner.name``."""
    inner = getattr(owner, name)
    label = label or name

    def wrapper(*a: Any, **k: Any) -> Any:
        stamps.append((f"{label} >", clock()))
        try:
            return inner(*a, **k)
        finally:
            stamps.append((f"{label} <", clock()))

    setattr(owner, name, wrapper)


# --- the traced monitor (child process) ---------------------------------------------------------


def _monitor_traced(out_dir: str, argv: list[str]) -> int:
    """Run a monitor with stamps around its start path; write them once it said ready."""
    stamps: list[Stamp] = [("monitor imported", clock())]
    from keel_supervisor import monitor  # noqa: PLC0415

    around(monitor, "wait_for_work", stamps, "monitor wait_for_work")
    around(monitor, "become_subreaper", stamps, "monitor subreaper")
    around(monitor.Monitor, "__init__", stamps, "monitor init")
    around(monitor.Monitor, "update", stamps, "monitor status write")
    around(monitor.Monitor, "open_ports", stamps, "monitor open_ports")
    around(monitor.Monitor, "start_container", stamps, "monitor start_container")
    around(monitor.Monitor, "runtime", stamps, "runtime")
    inner_ready = monitor.Monitor.signal_ready

    def ready(self: Any, message: str) -> None:
        stamps.append(("monitor signal_ready", clock()))
        inner_ready(self, message)
        Path(out_dir, f"{os.getpid()}.json").write_text(json.dumps(stamps))

    monitor.Monitor.signal_ready = ready  # type: ignore[method-assign]
    return monitor.main(argv)


# --- the traced supervisor (this process) -------------------------------------------------------


def _trace_supervisor(stamps: list[Stamp], out_dir: Path) -> None:

    from keel_supervisor import api, daemon, rootfs, spec, state, supervisor  # noqa: PLC0415

    sup = supervisor.Supervisor
    around(sup, "run", stamps, "Supervisor.run")
    around(sup, "create", stamps, "create")
    around(sup, "prepare", stamps, "prepare")
    around(sup, "_start" if hasattr(sup, "_start") else "start", stamps, "start")
    around(sup, "resolve", stamps, "resolve")
    around(sup, "monitor_alive", stamps, "monitor_alive")
    around(sup, "_take_monitor", stamps, "take spare")
    around(supervisor, "_read_ready", stamps, "wait ready")
    around(rootfs, "mount_overlay", stamps, "overlay mount")
    around(spec, "build", stamps, "spec.build")
    around(state, "write_json", stamps, "write_json")
    around(daemon.Daemon, "create", stamps, "API handler")
    around(api._RequestHandler, "handle_one_request", stamps, "HTTP request")
    for module in (supervisor,):
        module.write_json = state.write_json  # type: ignore[attr-defined]

    def monitor_argv(self: Any, ready_fd: int) -> list[str]:
        # "keel_supervisor.monitor" in the command line: how monitor_alive recognises one.
        return [
            sys.executable,
            __file__,
            "monitor-traced",
            str(out_dir),
            "keel_supervisor.monitor",
            "--spare",
            str(ready_fd),
        ]

    sup._monitor_argv = monitor_argv  # type: ignore[method-assign]


def _setup(base: Path) -> tuple[Any, Any, Any]:
    from keel_supervisor.api import Client  # noqa: PLC0415
    from keel_supervisor.daemon import Daemon, Settings  # noqa: PLC0415
    from keel_supervisor.testing import busybox, make_busybox_rootfs  # noqa: PLC0415

    settings = Settings(
        root=base / "state",
        run_dir=base / "run",
        socket=base / "api.sock",
        apps_dir=base / "apps",
        images=base / "images",
        bridge="kprof0",
        subnet="10.198.0.0/24",
        outbound=False,
    )
    daemon = Daemon(settings)
    daemon.start_services()
    config = busybox(make_busybox_rootfs(base / "rootfs"), "sleep", "300", network="none")
    return daemon, Client(settings.socket), config


def _settle(sup: Any) -> None:
    time.sleep(0.4)
    deadline = time.monotonic() + 5
    while not sup.spare_waiting() and time.monotonic() < deadline:
        time.sleep(0.01)


def _report(title: str, starts: list[list[Stamp]]) -> None:
    by_step: dict[str, list[int]] = defaultdict(list)
    totals = [s[-1][1] - s[0][1] for s in starts]
    shapes: dict[tuple[str, ...], int] = defaultdict(int)
    for s in starts:
        shapes[tuple(n for n, _ in s)] += 1
    shape = max(shapes, key=lambda k: shapes[k])
    typical = [s for s in starts if tuple(n for n, _ in s) == shape]
    for s in typical:
        for (a, ta), (b, tb) in itertools.pairwise(s):
            by_step[f"{a} -> {b}"].append(tb - ta)
    print(f"\n{title}: {len(starts)} starts ({len(typical)} of the usual shape)")
    p50, mean = statistics.median(totals) / 1e6, statistics.mean(totals) / 1e6
    print(f"  total p50 {p50:7.2f} ms, mean {mean:7.2f}")
    print("      p50     mean  (ms)")
    for step, values in by_step.items():
        p50, mean = statistics.median(values) / 1e6, statistics.mean(values) / 1e6
        print(f"  {p50:7.2f}  {mean:7.2f}  {step}")


PHASES = (
    ("API: client to handler", None, "API handler >"),
    ("supervisor: create, prepare", None, "wait ready >"),
    ("  of which create", "create >", "create <"),
    ("  of which start: look-up", "start >", "prepare >"),
    ("  of which prepare", "prepare >", "prepare <"),
    ("    of which the overlay mount", "overlay mount >", "overlay mount <"),
    ("hand-off to the spare monitor", "wait ready >", "monitor wait_for_work <"),
    ("monitor, before the runtime", "monitor wait_for_work <", "runtime >"),
    ("runtime (runc run --detach)", "runtime >", "runtime <"),
    ("monitor, after the runtime", "runtime <", "monitor signal_ready"),
    ("supervisor: ready to return", "monitor signal_ready", "start <"),
    ("API: handler to client", "start <", None),
)


def _phases(title: str, starts: list[list[Stamp]]) -> None:
    """Additive phases of each start (first stamp of each boundary), medians and means."""
    rows: dict[str, list[int]] = defaultdict(list)
    for s in starts:
        first: dict[str, int] = {}
        for n, t in s:
            first.setdefault(n, t)
        begin, end = s[0][1], s[-1][1]
        for label, a, b in PHASES:
            if (a is not None and a not in first) or (b is not None and b not in first):
                continue
            if a is None and "API handler >" not in first and b == "API handler >":
                continue
            ta = begin if a is None else first[a]
            tb = end if b is None else first[b]
            if a is None and b == "wait ready >" and "API handler >" in first:
                ta = first["API handler >"]
            rows[label].append(tb - ta)
    print(f"\n{title}: phases of a start, ms (p50 / mean)")
    for label, _, _ in PHASES:
        values = rows.get(label)
        if values:
            p50, mean = statistics.median(values) / 1e6, statistics.mean(values) / 1e6
            print(f"  {p50:7.2f}  {mean:7.2f}  {label}")


def _merge(mine: list[Stamp], out_dir: Path, begin: int, end: int) -> list[Stamp]:
    theirs: list[Stamp] = []
    for path in out_dir.glob("*.json"):
        theirs += [(n, t) for n, t in json.loads(path.read_text()) if begin <= t <= end]
    return sorted([s for s in mine if begin <= s[1] <= end] + theirs, key=lambda s: s[1])


def trace(runs: int) -> int:
    """Spans of ``Supervisor.run`` and of ``POST /containers``."""
    base = Path(tempfile.mkdtemp(prefix="keel-prof-sup-"))
    out_dir = base / "stamps"
    out_dir.mkdir()
    stamps: list[Stamp] = []
    _trace_supervisor(stamps, out_dir)
    daemon, client, config = _setup(base)
    sup = daemon.supervisor
    direct: list[list[Stamp]] = []
    through_api: list[list[Stamp]] = []
    print(f"load before {_load()}")
    try:
        for _ in range(runs):
            _settle(sup)
            begin = clock()
            stamps.append(("call", begin))
            cid = sup.run(config)
            end = clock()
            stamps.append(("return", end))
            time.sleep(0.1)  # the monitor writes its stamps right after saying ready
            direct.append(_merge(stamps, out_dir, begin, end))
            sup.remove(cid, force=True)

            _settle(sup)
            begin = clock()
            stamps.append(("client request", begin))
            client.request("POST", "/containers", {"config": config.model_dump(mode="json")})
            end = clock()
            stamps.append(("client answer", end))
            time.sleep(0.1)
            through_api.append(_merge(stamps, out_dir, begin, end))
            for cid in sup.ids():
                sup.remove(cid, force=True)
    finally:
        for cid in sup.ids():
            sup.remove(cid, force=True)
        daemon.shutdown()
        sup.bridge.remove()
        shutil.rmtree(base, ignore_errors=True)
    _report("Supervisor.run", direct)
    _report("API POST /containers", through_api)
    _phases("Supervisor.run", direct)
    _phases("API POST /containers", through_api)
    print(f"load after {_load()}")
    return 0


def floor(runs: int) -> int:
    """A no-op request (``GET /ping``) through the daemon's client and server."""
    base = Path(tempfile.mkdtemp(prefix="keel-prof-sup-"))
    daemon, client, _ = _setup(base)
    try:
        lat = []
        for _ in range(runs):
            begin = clock()
            client.request("GET", "/ping")
            lat.append(clock() - begin)
    finally:
        daemon.shutdown()
        daemon.supervisor.bridge.remove()
        shutil.rmtree(base, ignore_errors=True)
    print(f"GET /ping x{runs}: p50 {statistics.median(lat) / 1e6:.2f} ms; load {_load()}")
    return 0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str]) -> int:
    if argv and argv[0] == "monitor-traced":
        return _monitor_traced(argv[1], argv[3:])
    runs = 0
    for a in argv:
        if a.startswith("--runs="):
            runs = int(a.split("=", 1)[1])
    if argv and argv[0] == "trace":
        return trace(runs or 15)
    if argv and argv[0] == "floor":
        return floor(runs or 200)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
