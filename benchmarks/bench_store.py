"""keel-store against Debian's etcd, side by side in one run: ``nox -s bench -- store``.

Both servers get fresh data directories, free loopback ports and the same Python
grpc.aio client (the same stubs, the same requests): sequential put latency,
concurrent puts, linearizable and serializable ranges, watch fan-out, and (3 members)
the write-unavailability window after a SIGKILL of the leader. It prints each figure
and the keel/etcd ratio. Timings on a shared machine are noisy; nothing is asserted.

``etcdctl check perf --load=s`` (etcd's own Go client, 60 s per server and cluster
size) runs too, and last ``etcdctl snapshot save`` of 100k more keys (below), so a full
run takes about 7 minutes.

Options: ``--quick`` (smaller counts, no check perf), ``--nodes=1,3``,
``--check-perf=s,m,l`` (the loads to run; 60 s each per server), ``--no-check-perf``,
``--only=failover`` (just the leader kill, 3 members, no check perf) with
``--rounds=N`` (N kills per server, the victim restarted in between; prints each window
and the median, min and max); ``--only=puts`` (sequential and 64-concurrent puts only);
``--only=watch`` (the watch fan-out only); ``--only=snapshot`` (``etcdctl snapshot
save`` of 100k keys, or ``--preload=N``, with sequential puts meanwhile: their latency
while the server takes the snapshot); ``--only=compact`` (two compactions of 200k keys,
or ``--preload=N``, with puts meanwhile: the first, then one after 2,000 puts);
``--only=restart`` (200k keys, or ``--preload=N``, then a member killed -9 and restarted,
a follower with 3 members: the time until it serves the last revision again);
``--only=range`` (a range of all of 100k keys, or ``--preload=N``, with values and keys
only, with puts meanwhile);
``--preload=N`` (N keys written with 100-put txns before the sequential puts, which then
see a key space of that size); ``--puts=N`` (sequential puts; default 2000, 500 with
``--quick``); ``--baseline=DIR`` (also run keel-store from another checkout, e.g. the
main branch's, with ``DIR/components/*/src`` first on ``PYTHONPATH``: a before/after
comparison with etcd in the same run) with ``--repeat=N`` (N interleaved rounds of
all the servers, one table each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

from keel_core.testing import free_port
from keel_store.pb import rpcgrpc, rpcpb

console = Console(width=None if sys.stdout.isatty() else 132)
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
VALUE = b"v" * 256
FANOUT_PUTS = 1000
"""Puts of the watch fan-out (50 watchers): 200 took 0.3 s, and the ratio of such
short runs swung from 0.6x to 1.6x from one run to the next."""
FANOUT = f"watch fan-out 50x{FANOUT_PUTS}"


class Server:
    """The members of one server under test (a plain class: run.py loads us by path)."""

    def __init__(
        self,
        kind: str,
        argvs: list[list[str]],
        endpoints: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.argvs = argvs
        self.endpoints = endpoints
        self.env = env
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(argvs)

    def start_member(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(
            self.argvs[i], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env
        )

    def kill_member(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.procs[i] = None

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill_member(i)


def baseline_env(checkout: str) -> dict[str, str]:
    """The environment that runs keel-store from ``checkout``'s sources."""
    srcs = sorted(str(p) for p in Path(checkout).glob("components/*/src"))
    if not srcs:
        raise SystemExit(f"--baseline: no components/*/src under {checkout}")
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*srcs, *([old] if old else [])])}


def launch(kind: str, n: int, tmp: Path, env: dict[str, str] | None = None) -> Server:
    peers = [(f"m{i}", f"http://127.0.0.1:{free_port()}") for i in range(n)]
    initial = ",".join(f"{name}={url}" for name, url in peers)
    argvs, endpoints = [], []
    for name, peer in peers:
        client = f"127.0.0.1:{free_port()}"
        flags = [
            f"--name={name}",
            f"--data-dir={tmp / kind / name}",
            f"--listen-client-urls=http://{client}",
            f"--advertise-client-urls=http://{client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={initial}",
            "--initial-cluster-token=bench",
        ]
        if kind.startswith("keel"):
            argvs.append([sys.executable, "-m", "keel_store.daemon", *flags])
        else:
            argvs.append([ETCD, *flags, "--logger=zap", "--log-outputs=stderr"])
        endpoints.append(client)
    server = Server(kind, argvs, endpoints, env)
    for i in range(n):
        server.start_member(i)
    deadline = time.monotonic() + 60
    for ep in endpoints:
        while (
            subprocess.run(
                [ETCDCTL, f"--endpoints={ep}", "endpoint", "health"],
                capture_output=True,
                check=False,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{kind} did not become healthy")
            time.sleep(0.2)
    return server


def leader_index(server: Server, timeout: float = 15.0) -> int:
    """The member that reports itself leader, asked again for up to ``timeout`` s: once,
    right after ``etcdctl check perf --load=l`` on three keel-store members, no member
    named itself (not reproduced since). Every member is busy for a second or two then,
    applying check perf's final delete of ~200k keys (etcd 1.3 s, keel-store 1.0 s)."""
    deadline = time.monotonic() + timeout
    while True:
        for i, ep in enumerate(server.endpoints):
            if server.procs[i] is None:
                continue
            r = subprocess.run(
                [ETCDCTL, f"--endpoints={ep}", "endpoint", "status", "-w", "json"],
                capture_output=True,
                text=True,
                check=False,
            )
            if r.returncode == 0:
                st = json.loads(r.stdout)[0]["Status"]
                if st["leader"] == st["header"]["member_id"]:
                    return i
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.kind}: no member reported itself leader in {timeout} s")
        time.sleep(0.2)


async def preload(ep: str, keys: int) -> None:
    """``keys`` keys (``pre/...``), 100 per txn (etcd allows 128 ops per txn)."""
    async with grpc.aio.insecure_channel(ep) as ch:
        kv = rpcgrpc.KVStub(ch)
        for start in range(0, keys, 100):
            ops = [
                rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"pre/%08d" % i, value=VALUE))
                for i in range(start, min(keys, start + 100))
            ]
            await kv.Txn(rpcpb.TxnRequest(success=ops))


async def sequential_puts(ep: str, total: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(ep) as ch:
        kv = rpcgrpc.KVStub(ch)
        lat = []
        start = time.perf_counter()
        for i in range(total):
            t = time.perf_counter()
            await kv.Put(rpcpb.PutRequest(key=b"seq/%08d" % i, value=VALUE))
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    lat.sort()
    return {
        "ops/s": total / elapsed,
        "p50 ms": lat[len(lat) // 2] * 1000,
        "p99 ms": lat[int(len(lat) * 0.99)] * 1000,
        "max ms": lat[-1] * 1000,
    }


async def concurrent(ep: list[str], total: int, conc: int, op: str) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(e) for e in ep]
    stubs = [rpcgrpc.KVStub(c) for c in channels]
    if op != "put":
        await stubs[0].Put(rpcpb.PutRequest(key=b"r/key", value=VALUE))
    counter = iter(range(total))
    lat: list[float] = []

    async def worker(w: int) -> None:
        stub = stubs[w % len(stubs)]
        for i in counter:
            t = time.perf_counter()
            if op == "put":
                await stub.Put(rpcpb.PutRequest(key=b"c/%08d" % i, value=VALUE))
            else:
                await stub.Range(rpcpb.RangeRequest(key=b"r/key", serializable=op == "range-s"))
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    elapsed = time.perf_counter() - start
    for c in channels:
        await c.close()
    return {"ops/s": total / elapsed, "p50 ms": statistics.median(lat) * 1000}


async def watch_fanout(ep: str, watchers: int, puts: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(ep) as ch:
        watch = rpcgrpc.WatchStub(ch)
        kv = rpcgrpc.KVStub(ch)
        received = 0
        done = asyncio.Event()
        queues: list[asyncio.Queue[object]] = []

        async def one() -> None:
            nonlocal received
            q: asyncio.Queue[object] = asyncio.Queue()
            queues.append(q)
            await q.put(
                rpcpb.WatchRequest(
                    create_request=rpcpb.WatchCreateRequest(key=b"fan/", range_end=b"fan0")
                )
            )

            async def reqs():  # type: ignore[no-untyped-def]
                while True:
                    yield await q.get()

            async for resp in watch.Watch(reqs()):
                received += len(resp.events)
                if received >= watchers * puts:
                    done.set()

        tasks = [asyncio.create_task(one()) for _ in range(watchers)]
        await asyncio.sleep(1.0)
        start = time.perf_counter()
        for i in range(puts):
            await kv.Put(rpcpb.PutRequest(key=b"fan/%d" % i, value=VALUE))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 60)
        elapsed = time.perf_counter() - start
        for t in tasks:
            t.cancel()
    return {"events/s": received / elapsed}


SNAPSHOT_KEYS = 100_000
"""Keys written before ``etcdctl snapshot save`` (``--only=snapshot``; ``--preload=N``)."""
COMPACT_KEYS = 200_000
"""Keys written before the compactions of ``--only=compact`` (``--preload=N``)."""


async def probed(ep: str, action: Callable[[], Awaitable[None]]) -> dict[str, float]:
    """``action``, timed, with sequential puts to the member ``ep`` meanwhile: how long
    the member stops answering writes while it does what ``action`` asks."""
    async with grpc.aio.insecure_channel(ep) as ch:
        kv = rpcgrpc.KVStub(ch)
        await kv.Put(rpcpb.PutRequest(key=b"probe/warm", value=VALUE))
        lat: list[float] = []
        stop = asyncio.Event()

        async def probe() -> None:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                await kv.Put(rpcpb.PutRequest(key=b"probe/%d" % (i % 100), value=VALUE))
                lat.append(time.perf_counter() - t)
                i += 1

        prober = asyncio.create_task(probe())
        start = time.perf_counter()
        try:
            await action()
        finally:
            elapsed = time.perf_counter() - start
            stop.set()
            await prober
    lat.sort()
    return {
        "s": elapsed,
        "puts meanwhile /s": len(lat) / elapsed,
        "put p99 ms": lat[int(len(lat) * 0.99)] * 1000,
        "put max ms": lat[-1] * 1000,
    }


async def snapshot_save(ep: str, tmp: Path) -> dict[str, float]:
    """``etcdctl snapshot save`` of the key space (a backup job on a running cluster)."""
    out = tmp / "client-snapshot.db"

    async def save() -> None:
        proc = await asyncio.create_subprocess_exec(
            ETCDCTL,
            f"--endpoints={ep}",
            "snapshot",
            "save",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"etcdctl snapshot save failed: {err.decode()[-400:]}")

    try:
        got = await probed(ep, save)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return {"save s": float("nan")}
    return {"save s": got.pop("s"), "MB": out.stat().st_size / 1e6, **got}


async def big_ranges(ep: str) -> dict[str, dict[str, float]]:
    """A linearizable range of every preloaded key (values and keys only), from another
    connection, with sequential puts to the same member meanwhile."""
    out = {}
    unlimited = [("grpc.max_receive_message_length", -1)]  # as etcdctl's client
    async with grpc.aio.insecure_channel(ep, options=unlimited) as ch:
        kv = rpcgrpc.KVStub(ch)
        for name, keys_only in (("range of every key", False), ("keys-only range", True)):
            count = 0

            async def read(keys_only: bool = keys_only) -> None:
                nonlocal count
                got = await kv.Range(
                    rpcpb.RangeRequest(key=b"pre/", range_end=b"pre0", keys_only=keys_only)
                )
                count = len(got.kvs)

            out[name] = await probed(ep, read)
            out[name]["keys"] = count
    return out


async def compactions(ep: str) -> dict[str, dict[str, float]]:
    """Two compactions of the preloaded key space, each with puts meanwhile: the first
    of every version written so far, then one after 2,000 puts to existing keys (the
    steady state of a periodic auto-compaction). etcd answers a compaction once it is
    scheduled and removes the versions in the background; keel-store once applied."""
    async with grpc.aio.insecure_channel(ep) as ch:
        kv = rpcgrpc.KVStub(ch)

        async def compact() -> None:
            head = await kv.Range(rpcpb.RangeRequest(key=b"probe/warm"))
            await kv.Compact(rpcpb.CompactionRequest(revision=head.header.revision))

        first = await probed(ep, compact)
        for i in range(2000):
            await kv.Put(rpcpb.PutRequest(key=b"pre/%08d" % (i * 50), value=VALUE))
        again = await probed(ep, compact)
    return {"compact, first": first, "compact after 2000 puts": again}


RESTART_KEYS = 200_000
"""Keys written before the restarts of ``--only=restart`` (``--preload=N``)."""


async def restart(server: Server, victim: int) -> dict[str, float]:
    """Kill -9 member ``victim`` (with 3 members a follower), restart it, and time until
    it serves the last revision written before the kill (a serializable read on it):
    its recovery from its snapshot and WAL, and with 3 members its catching up."""
    leader = server.endpoints[leader_index(server)]
    async with grpc.aio.insecure_channel(leader) as ch:
        head = await rpcgrpc.KVStub(ch).Put(rpcpb.PutRequest(key=b"restart/x", value=VALUE))
    wanted = head.header.revision
    server.kill_member(victim)
    start = time.perf_counter()
    server.start_member(victim)
    # Connection attempts 20 ms apart: with gRPC's default backoff (1 s, growing) the
    # client found a member that listened 1.74 s after its start only at 2.62 s.
    retry = [
        ("grpc.initial_reconnect_backoff_ms", 20),
        ("grpc.min_reconnect_backoff_ms", 20),
        ("grpc.max_reconnect_backoff_ms", 20),
    ]
    async with grpc.aio.insecure_channel(server.endpoints[victim], options=retry) as ch:
        kv = rpcgrpc.KVStub(ch)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                got = await kv.Range(
                    rpcpb.RangeRequest(key=b"restart/x", serializable=True), timeout=1.0
                )
                if got.header.revision >= wanted:
                    break
            if time.perf_counter() - start > 120:
                raise RuntimeError(f"{server.kind} member {victim} did not come back")
            await asyncio.sleep(0.02)
    return {"serving again s": time.perf_counter() - start}


def wait_healthy(server: Server, i: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (
        subprocess.run(
            [ETCDCTL, f"--endpoints={server.endpoints[i]}", "endpoint", "health"],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.kind} member {i} did not become healthy")
        time.sleep(0.2)


async def failovers(server: Server, rounds: int) -> dict[str, float]:
    """``rounds`` leader kills; the victim is restarted and healthy before the next."""
    if rounds == 1:
        return await failover(server)
    windows = []
    for r in range(rounds):
        windows.append((await failover(server))["unavailable s"])
        console.print(f"  {server.kind} leader kill {r + 1}/{rounds}: {windows[-1]:.3f} s")
        for i in range(len(server.procs)):
            wait_healthy(server, i)
        await asyncio.sleep(1.0)  # let the restarted member catch up and settle
    return {
        "unavailable s": statistics.median(windows),
        "min s": min(windows),
        "max s": max(windows),
    }


async def failover(server: Server) -> dict[str, float]:
    victim = leader_index(server)
    others = [e for i, e in enumerate(server.endpoints) if i != victim]
    channels = [grpc.aio.insecure_channel(e) for e in others]
    stubs = [rpcgrpc.KVStub(c) for c in channels]
    await stubs[0].Put(rpcpb.PutRequest(key=b"fo/warm", value=VALUE))
    server.kill_member(victim)
    start = time.perf_counter()
    i = 0
    while True:
        try:
            await stubs[i % len(stubs)].Put(rpcpb.PutRequest(key=b"fo/x", value=VALUE), timeout=1.0)
            break
        except grpc.aio.AioRpcError:
            i += 1
    window = time.perf_counter() - start
    for c in channels:
        await c.close()
    server.start_member(victim)
    return {"unavailable s": window}


def check_perf(ep: str, load: str) -> dict[str, float]:
    """``etcdctl check perf --load=LOAD`` (60 s of rate-limited puts from etcd's Go client).

    etcdctl prints PASS/FAIL lines for throughput, slowest request and stddev; a server
    that cannot keep up fails the throughput line (what counts here is writes/s).
    """
    r = subprocess.run(
        [ETCDCTL, f"--endpoints={ep}", "check", "perf", f"--load={load}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    out = {"writes/s": 0.0, "slowest s": float("nan"), "pass": 0.0}
    for line in r.stdout.replace("\r", "\n").splitlines():
        # The progress bar may share a line with a verdict; a failed slowest-request or
        # stddev check has no "FAIL:" prefix ("Slowest request took too long: 1.3s").
        number = re.findall(r"\d+(?:\.\d+)?", line.rsplit(":", 1)[-1])
        if "Throughput" in line and number:
            out["writes/s"] = float(number[0])
        elif "Slowest request took" in line and number:
            out["slowest s"] = float(number[0])
        elif line.strip().endswith(("PASS", "FAIL")) and ":" not in line:
            out["pass"] = 1.0 if line.strip().endswith("PASS") else 0.0
    if out["writes/s"] == 0.0:
        # etcdctl stopped before its verdict (ExitWithError: the first Get, or the
        # final delete of the keys it wrote, failed): say why rather than show 0 alone.
        print(
            f"etcdctl check perf --load={load}: no throughput (exit {r.returncode}): "
            f"{(r.stderr.strip() or r.stdout.strip())[-400:]}",
            file=sys.stderr,
        )
    return out


async def measure(
    kind: str,
    n: int,
    quick: bool,
    perf: list[str],
    *,
    only: str = "",
    rounds: int = 1,
    keys: int = 0,
    puts: int = 0,
    env: dict[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    scale = 4 if quick else 1
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        server = launch(kind, n, Path(tmp), env)
        try:
            if only == "failover":
                return {"leader kill": await failovers(server, rounds)} if n > 1 else {}
            ep = server.endpoints[leader_index(server)]
            if only == "restart":
                await preload(ep, keys or RESTART_KEYS)
                victim = (leader_index(server) + 1) % n
                return {f"restart, {keys or RESTART_KEYS} keys": await restart(server, victim)}
            if only == "range":
                await preload(ep, keys or SNAPSHOT_KEYS)
                return await big_ranges(ep)
            if only == "compact":
                await preload(ep, keys or COMPACT_KEYS)
                return await compactions(ep)
            if only == "snapshot":
                await preload(ep, keys or SNAPSHOT_KEYS)
                return {
                    f"snapshot save, {keys or SNAPSHOT_KEYS} keys": await snapshot_save(
                        ep, Path(tmp)
                    )
                }
            if keys:
                await preload(ep, keys)
            seq = f"sequential put, {keys} keys" if keys else "sequential put"
            if only == "watch":
                return {FANOUT: await watch_fanout(ep, 50, FANOUT_PUTS // scale)}
            if only == "puts":
                return {
                    seq: await sequential_puts(ep, puts or 2000 // scale),
                    "put conc 64": await concurrent(server.endpoints, 8000 // scale, 64, "put"),
                }
            out = {
                seq: await sequential_puts(ep, puts or 2000 // scale),
                "put conc 64": await concurrent(server.endpoints, 8000 // scale, 64, "put"),
                "range linearizable conc 64": await concurrent(
                    server.endpoints, 8000 // scale, 64, "range-l"
                ),
                "range serializable conc 64": await concurrent(
                    server.endpoints, 8000 // scale, 64, "range-s"
                ),
                FANOUT: await watch_fanout(ep, 50, FANOUT_PUTS // scale),
            }
            for load in perf:
                out[f"etcdctl check perf {load}"] = check_perf(",".join(server.endpoints), load)
            if n > 1:
                out["leader kill"] = await failovers(server, rounds)
            if not quick:
                ep = server.endpoints[leader_index(server)]
                await preload(ep, SNAPSHOT_KEYS)
                out[f"snapshot save, {SNAPSHOT_KEYS} keys"] = await snapshot_save(ep, Path(tmp))
            return out
        finally:
            server.stop()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    perf = [] if quick else ["s"]
    for a in argv:
        if a == "--check-perf":
            perf = ["s"]
        elif a.startswith("--check-perf="):
            perf = [x for x in a.split("=", 1)[1].split(",") if x]
        elif a == "--no-check-perf":
            perf = []
    # The members run from compiled modules, as an installed keel-store does (its
    # package has them), without writing them into the source tree: a restart
    # compiling every module again measured the compiler, not the member. Set first:
    # --baseline's environment is a copy of this one.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault(
        "PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "keel-bench-pycache")
    )
    nodes = [1, 3]
    only, rounds, keys, puts, repeat = "", 1, 0, 0, 1
    kinds: dict[str, dict[str, str] | None] = {"etcd": None, "keel": None}
    for a in argv:
        if a.startswith("--only="):
            only = a.split("=", 1)[1]
            if only not in ("failover", "puts", "watch", "snapshot", "compact", "restart", "range"):
                print(
                    "--only: failover, puts, watch, snapshot, compact, restart or range, "
                    f"not {only!r}"
                )
                return 2
            if only == "failover":
                nodes = [3]
            perf = []
        elif a.startswith("--rounds="):
            rounds = max(1, int(a.split("=", 1)[1]))
        elif a.startswith("--preload="):
            keys = int(a.split("=", 1)[1])
        elif a.startswith("--puts="):
            puts = int(a.split("=", 1)[1])
        elif a.startswith("--repeat="):
            repeat = max(1, int(a.split("=", 1)[1]))
        elif a.startswith("--baseline="):
            kinds = {"etcd": None, "keel-base": baseline_env(a.split("=", 1)[1]), "keel": None}
    for a in argv:
        if a.startswith("--nodes="):
            nodes = [int(x) for x in a.split("=", 1)[1].split(",")]
    for n, r in ((n, r) for n in nodes for r in range(repeat)):
        results = {}
        load_before = _load()
        for kind, env in kinds.items():
            console.print(f"[bold]{kind}[/bold], {n} member(s) ...")
            results[kind] = asyncio.run(
                measure(
                    kind, n, quick, perf, only=only, rounds=rounds, keys=keys, puts=puts, env=env
                )
            )
        title = f"keel-store vs etcd 3.4.23, {n} member(s), loopback, 256 B values"
        table = Table(
            title=title + (f", round {r + 1}/{repeat}" if repeat > 1 else ""),
            caption=f"load average (1, 5, 15 min) before {load_before}, after {_load()}",
        )
        base = "keel-base" in kinds
        columns = ["test", "metric", *kinds, "keel/etcd", *(["keel/base"] if base else [])]
        for col in columns:
            table.add_column(col, justify="left" if col in ("test", "metric") else "right")
        for test, metrics in results["etcd"].items():
            for metric, theirs in metrics.items():
                values = [results[k].get(test, {}).get(metric, float("nan")) for k in kinds]
                ours = values[-1]
                ratios = [ours / theirs if theirs else float("nan")]
                if base:
                    ratios.append(ours / values[1] if values[1] else float("nan"))
                table.add_row(
                    test, metric, *(f"{v:,.2f}" for v in values), *(f"{x:.2f}x" for x in ratios)
                )
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
