"""Where a keel-store put spends its time, and what a bare gRPC call costs here.

Not a ``bench_*`` module (``run.py`` does not pick it up); run it by hand::

    python benchmarks/store_profile.py trace [--puts=2000]   # spans of one put, 1 member
    python benchmarks/store_profile.py floor [--puts=2000]   # no-op unary RPC servers
    python benchmarks/store_profile.py gc [--keys=30000] [--puts=5000] [--rounds=2]
    python benchmarks/store_profile.py gc-soak [--keys=10000] [--rounds=16]

``trace`` starts ``keel-store`` (one member, fsync on) in a child process whose hot
functions are wrapped to record ``perf_counter_ns`` stamps, drives it with sequential
puts from this process (the bench's grpc.aio client), and prints the median time
between consecutive stamps of a put: gRPC handler entry, proposal, the node loop
picking it up, Raft Ready, WAL append, fsync, apply, the handler
resuming and returning. What the client sees minus the handler's own time is the
gRPC layer (both ends, plus loopback).

``floor`` serves a no-op ``KV/Put`` from the same generated stubs in several server
set-ups (keel-store's own server, grpc.aio, the thread-pool server, server options) and
measures sequential and 64-concurrent calls from the same client, so the fixed cost of
one RPC is known before blaming the store for it.

``gc`` compares the daemon with and without its garbage-collector policy
(:mod:`keel_store.server.gc_policy`; "off" is the same code with the policy's
``install`` made a no-op), the two interleaved for ``--rounds``: one member, ``--keys``
keys loaded with 100-put txns, then ``--puts`` sequential puts (p50, p99, p99.9, max)
and 8000 puts from 64 concurrent clients. The child records every collection with
``gc.callbacks``: collections and time per generation, the longest pause, and the
collector's time per put of each phase.

``gc-soak`` watches what stays frozen under the policy in a steady state: each round
writes ``--keys`` keys from 64 clients (one put in 50 with a 50 ms deadline, so some
fail and their errors go through the server), deletes them every other round and
compacts; ``--snapshot-count=10000`` makes the member snapshot and drop Raft entries
as it goes. It prints the permanent generation's size and the RSS after each round:
if frozen objects leaked (cyclic garbage), both would grow round after round.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc
from bench_store import VALUE, preload  # this directory: the script is run as a file

from keel_core.testing import free_port, process_cpu_seconds
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server.grpc_server import GrpcServer

# --- the traced server (child process) --------------------------------------------------------


def _serve_traced(out: str, argv: list[str]) -> int:
    """Run the daemon with stamps around its hot functions; dump them on exit."""
    from keel_store import daemon  # noqa: PLC0415
    from keel_store.mvcc import commands  # noqa: PLC0415
    from keel_store.raft import RaftNode  # noqa: PLC0415
    from keel_store.server import kv_service, node  # noqa: PLC0415
    from keel_store.wal import NodeStorage  # noqa: PLC0415

    stamps: list[tuple[str, int]] = []
    clock = time.perf_counter_ns

    def around(owner: Any, name: str, before: str | None, after: str | None) -> None:
        inner = getattr(owner, name)
        if asyncio.iscoroutinefunction(inner):

            async def awrapper(*a: Any, **k: Any) -> Any:
                if before:
                    stamps.append((before, clock()))
                try:
                    return await inner(*a, **k)
                finally:
                    if after:
                        stamps.append((after, clock()))

            setattr(owner, name, awrapper)
        else:

            def wrapper(*a: Any, **k: Any) -> Any:
                if before:
                    stamps.append((before, clock()))
                try:
                    return inner(*a, **k)
                finally:
                    if after:
                        stamps.append((after, clock()))

            setattr(owner, name, wrapper)

    around(kv_service.KVService, "Put", "handler entry", "handler return")
    around(node.StoreNode, "propose", "propose", "proposal resolved")
    around(node.StoreNode, "_propose_or_forward", "loop picks up", None)
    around(RaftNode, "propose", None, "raft proposed")
    around(RaftNode, "ready", None, "ready")
    around(NodeStorage, "append", None, "wal append")
    around(NodeStorage, "sync", "fsync start", "fsync end")
    around(commands, "apply", "apply start", "apply end")
    around(RaftNode, "advance", None, "advance")

    def dump(*_: Any) -> None:
        Path(out).write_text(json.dumps(stamps))

    signal.signal(signal.SIGUSR1, dump)
    return daemon.main(argv)


def _spans(stamps: list[tuple[str, int]]) -> tuple[list[list[tuple[str, int]]], list[int]]:
    """Split the stamps into one list per put (from handler entry to handler return)."""
    puts: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] | None = None
    for name, t in stamps:
        if name == "handler entry":
            current = [(name, t)]
        elif current is not None:
            current.append((name, t))
            if name == "handler return":
                puts.append(current)
                current = None
    durations = [p[-1][1] - p[0][1] for p in puts]
    return puts, durations


async def _sequential(ep: str, total: int) -> list[float]:
    async with grpc.aio.insecure_channel(ep) as ch:
        kv = rpcgrpc.KVStub(ch)
        for i in range(200):
            await kv.Put(rpcpb.PutRequest(key=b"warm/%d" % i, value=VALUE))
        lat = []
        for i in range(total):
            t = time.perf_counter_ns()
            await kv.Put(rpcpb.PutRequest(key=b"seq/%08d" % i, value=VALUE))
            lat.append(time.perf_counter_ns() - t)
    return lat


def trace(puts: int) -> int:
    """Spans of sequential puts against one traced member."""
    with tempfile.TemporaryDirectory(prefix="keel-trace-") as tmp:
        client, peer = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        out = Path(tmp) / "stamps.json"
        proc = _start_member(["serve-traced", str(out)], tmp, client, peer)
        try:
            _wait_ready(client)
            lat = asyncio.run(_sequential(client, puts))
            proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            stamps = json.loads(out.read_text())
        finally:
            proc.terminate()
            proc.wait(10)
    spans, handler = _spans([(n, t) for n, t in stamps])
    spans = spans[-puts:]
    handler = handler[-puts:]
    by_step: dict[str, list[int]] = defaultdict(list)
    shape = max(
        {tuple(n for n, _ in s) for s in spans}, key=lambda k: sum(1 for s in spans if _key(s) == k)
    )
    typical = [s for s in spans if _key(s) == shape]
    for s in typical:
        for (a, ta), (b, tb) in itertools.pairwise(s):
            by_step[f"{a} -> {b}"].append(tb - ta)
    client_p50 = statistics.median(lat)
    handler_p50 = statistics.median(handler)
    print(f"{len(spans)} puts, {len(typical)} with the usual shape; load {_load()}")
    print(f"client sees      p50 {client_p50 / 1000:8.1f} us")
    print(f"handler (server) p50 {handler_p50 / 1000:8.1f} us")
    print(f"gRPC + loopback  p50 {(client_p50 - handler_p50) / 1000:8.1f} us (client - handler)")
    for step, values in by_step.items():
        print(f"  {statistics.median(values) / 1000:8.1f} us  {step}")
    return 0


def _key(span: list[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(n for n, _ in span)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _start_member(
    mode: list[str], tmp: str, client: str, peer: str, *flags: str
) -> subprocess.Popen[bytes]:
    """This script in ``mode`` as a one-member keel-store on ``client``/``peer``, data in tmp."""
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            *mode,
            "--name=m0",
            f"--data-dir={tmp}/m0",
            f"--listen-client-urls=http://{client}",
            f"--advertise-client-urls=http://{client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=m0={peer}",
            *flags,
        ],
    )


def _wait_ready(ep: str) -> None:
    async def probe() -> None:
        async with grpc.aio.insecure_channel(ep) as ch:
            await rpcgrpc.KVStub(ch).Range(rpcpb.RangeRequest(key=b"x"), timeout=1)

    deadline = time.monotonic() + 30
    while True:
        try:
            asyncio.run(probe())
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- the garbage collector (child process and driver) ------------------------------------------


def _serve_gc(out: str, policy: str, argv: list[str]) -> int:
    """Run the daemon, its GC policy on or off, recording every collection; dump on SIGUSR1."""
    import gc  # noqa: PLC0415

    from keel_store import daemon  # noqa: PLC0415
    from keel_store.server import gc_policy  # noqa: PLC0415

    if policy == "off":
        gc_policy.GcPolicy.install = lambda self: None  # type: ignore[method-assign]
    stats = [[0, 0, 0] for _ in range(3)]  # per generation: count, total ns, max ns
    started = [0]

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
            return
        took = time.perf_counter_ns() - started[0]
        s = stats[info["generation"]]
        s[0] += 1
        s[1] += took
        s[2] = max(s[2], took)

    gc.callbacks.insert(0, record)

    def dump(*_: Any) -> None:
        Path(out).write_text(json.dumps({"gc": stats, "frozen": gc.get_freeze_count()}))
        for s in stats:
            s[:] = [0, 0, 0]

    signal.signal(signal.SIGUSR1, dump)
    return daemon.main(argv)


async def _gc_load(ep: str, keys: int, puts: int) -> dict[str, Any]:
    await preload(ep, keys)
    async with grpc.aio.insecure_channel(ep) as ch:
        kv = rpcgrpc.KVStub(ch)
        lat = []
        for i in range(puts):
            t = time.perf_counter_ns()
            await kv.Put(rpcpb.PutRequest(key=b"seq/%08d" % i, value=VALUE))
            lat.append(time.perf_counter_ns() - t)
    lat.sort()
    return {
        "p50": lat[len(lat) // 2] / 1e6,
        "p99": lat[int(len(lat) * 0.99)] / 1e6,
        "p99.9": lat[int(len(lat) * 0.999)] / 1e6,
        "max": lat[-1] / 1e6,
    }


def _gc_stats(proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return dict(json.loads(out.read_text()))
        time.sleep(0.05)
    raise RuntimeError("no GC stats from the child")


def _gc_round(policy: str, keys: int, puts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="keel-gc-") as tmp:
        client, peer = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        out = Path(tmp) / "gc.json"
        proc = _start_member(["serve-gc", str(out), policy], tmp, client, peer)
        try:
            _wait_ready(client)
            _gc_stats(proc, out)  # start counting from here
            seq = asyncio.run(_gc_load(client, keys, puts))
            seq_gc = _gc_stats(proc, out)
            rate = asyncio.run(_concurrent(client, 8000, 64))
            conc_gc = _gc_stats(proc, out)
        finally:
            proc.terminate()
            proc.wait(10)
    return {"seq": seq, "seq_gc": seq_gc, "rate": rate, "conc_gc": conc_gc}


def _gc_line(stats: dict[str, Any], puts: int) -> str:
    gens = stats["gc"]
    total = sum(g[1] for g in gens)
    longest = max(g[2] for g in gens)
    counts = "/".join(str(g[0]) for g in gens)
    full = gens[2][1] / 1e6
    return (
        f"collections {counts} (gen 0/1/2), {total / 1e6:6.1f} ms in all ({full:5.1f} ms full), "
        f"longest {longest / 1e6:5.1f} ms, {total / 1e3 / puts:5.1f} us/put, "
        f"frozen {stats['frozen']}"
    )


async def _soak_round(ep: str, keys: int, r: int) -> None:
    async with grpc.aio.insecure_channel(ep) as ch:
        kv = rpcgrpc.KVStub(ch)
        counter = iter(range(keys))

        async def worker() -> None:
            for i in counter:
                request = rpcpb.PutRequest(key=b"s/%08d" % i, value=VALUE)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await kv.Put(request, timeout=0.05 if i % 50 == 0 else 10)

        await asyncio.gather(*(worker() for _ in range(64)))
        if r % 2:
            await kv.DeleteRange(rpcpb.DeleteRangeRequest(key=b"s/", range_end=b"s0"))
        revision = (await kv.Range(rpcpb.RangeRequest(key=b"s/"))).header.revision
        await kv.Compact(rpcpb.CompactionRequest(revision=revision))


def gc_soak(keys: int, rounds: int) -> int:
    """The permanent generation and the RSS of a member under a steady load."""
    print(f"load {_load()}")
    with tempfile.TemporaryDirectory(prefix="keel-gc-") as tmp:
        client, peer = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        out = Path(tmp) / "gc.json"
        proc = _start_member(
            ["serve-gc", str(out), "on"], tmp, client, peer, "--snapshot-count=10000"
        )
        try:
            _wait_ready(client)
            print(f"started: frozen {_gc_stats(proc, out)['frozen']}")
            for r in range(rounds):
                asyncio.run(_soak_round(client, keys, r))
                stats = _gc_stats(proc, out)
                status = Path(f"/proc/{proc.pid}/status").read_text()
                rss = int(status.split("VmRSS:")[1].split()[0])
                print(
                    f"round {r + 1}: frozen {stats['frozen']}, RSS {rss} kB, "
                    f"full collections {stats['gc'][2][0]}"
                )
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"load {_load()}")
    return 0


def gc_compare(keys: int, puts: int, rounds: int) -> int:
    """The daemon with its GC policy off and on, interleaved."""
    print(f"{keys} keys preloaded, {puts} sequential puts, 8000 puts 64-concurrent")
    for r in range(rounds):
        for policy in ("off", "on"):
            load = _load()
            res = _gc_round(policy, keys, puts)
            q = res["seq"]
            print(f"round {r + 1}, policy {policy}, load before {load}, after {_load()}")
            print(
                f"  sequential p50 {q['p50']:.2f} p99 {q['p99']:.2f} p99.9 {q['p99.9']:.2f}"
                f" max {q['max']:.2f} ms"
            )
            print(f"    preload + sequential: {_gc_line(res['seq_gc'], keys + puts)}")
            print(f"  64 concurrent {res['rate']:7.0f} puts/s")
            print(f"    concurrent: {_gc_line(res['conc_gc'], 8000)}")
    return 0


# --- the no-op servers --------------------------------------------------------------------------

_RESP = rpcpb.PutResponse(header=rpcpb.ResponseHeader(cluster_id=1, member_id=2, revision=3))


class _AioKV(rpcgrpc.KVServicer):  # type: ignore[misc]
    async def Put(self, request: Any, context: Any) -> Any:
        return _RESP

    async def Range(self, request: Any, context: Any) -> Any:
        return rpcpb.RangeResponse()


class _SuspendingKV(_AioKV):
    """Like the store: the handler waits once for a future another callback resolves."""

    async def Put(self, request: Any, context: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, _RESP)
        return await fut


class _SyncKV(rpcgrpc.KVServicer):  # type: ignore[misc]
    def Put(self, request: Any, context: Any) -> Any:
        return _RESP

    def Range(self, request: Any, context: Any) -> Any:
        return rpcpb.RangeResponse()


FLOOR_KINDS = {
    "keel": [],  # keel_store.server.grpc_server, the daemon's server
    "keel, handler suspends once": [],
    "aio": [],
    "aio so_reuseport=0": [("grpc.so_reuseport", 0)],
    "aio max_concurrent_streams=1000": [("grpc.max_concurrent_streams", 1000)],
    "aio uvloop": [],
    "aio, handler suspends once": [],
    "aio uvloop, handler suspends once": [],
    "sync pool 4": [],
    "sync pool 16": [],
    "sync pool 64": [],
}


def _serve_floor(kind: str, address: str) -> int:
    options = FLOOR_KINDS[kind]
    if kind.startswith("sync"):
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        server = grpc.server(ThreadPoolExecutor(int(kind.rsplit(" ", 1)[1])), options=options)
        rpcgrpc.add_KVServicer_to_server(_SyncKV(), server)
        server.add_insecure_port(address)
        server.start()
        signal.sigwait({signal.SIGTERM})
        server.stop(0)
        return 0

    async def run() -> None:
        server: Any = (
            GrpcServer(max_receive_message_length=4 << 20)
            if kind.startswith("keel")
            else grpc.aio.server(options=options)
        )
        servicer = _SuspendingKV() if "suspends" in kind else _AioKV()
        rpcgrpc.add_KVServicer_to_server(servicer, server)
        server.add_insecure_port(address)
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    if "uvloop" in kind:
        import uvloop  # noqa: PLC0415

        uvloop.run(run())
    else:
        asyncio.run(run())
    return 0


async def _concurrent(ep: str, total: int, conc: int) -> float:
    async with grpc.aio.insecure_channel(ep) as ch:
        kv = rpcgrpc.KVStub(ch)
        counter = iter(range(total))

        async def worker() -> None:
            for i in counter:
                await kv.Put(rpcpb.PutRequest(key=b"c/%08d" % i, value=VALUE))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return total / (time.perf_counter() - start)


def floor(puts: int, kinds: list[str]) -> int:
    """Sequential and concurrent no-op Puts against each server set-up.

    Also the server's CPU time per call under the 64 concurrent clients: what one core
    of a Python gRPC server can serve at best, whatever the handler does.
    """
    print(f"load {_load()}")
    for kind in kinds:
        if "uvloop" in kind:
            try:
                import uvloop  # noqa: F401, PLC0415
            except ImportError:
                continue
        ep = f"127.0.0.1:{free_port()}"
        proc = subprocess.Popen([sys.executable, __file__, "serve-floor", kind, ep])
        try:
            _wait_ready(ep)
            lat = asyncio.run(_sequential(ep, puts))
            cpu = process_cpu_seconds(proc.pid)
            rate = asyncio.run(_concurrent(ep, puts * 4, 64))
            cpu = process_cpu_seconds(proc.pid) - cpu
        finally:
            proc.terminate()
            proc.wait(10)
        p50 = statistics.median(lat) / 1000
        seq = f"sequential p50 {p50:6.1f} us ({1e6 / p50:5.0f}/s)"
        per_call = cpu / (puts * 4) * 1e6
        print(f"{kind:34s} {seq}, conc 64 {rate:5.0f}/s ({per_call:3.0f} us server CPU/call)")
    print(f"load {_load()}")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "serve-traced":
        return _serve_traced(argv[1], argv[2:])
    if argv and argv[0] == "serve-floor":
        return _serve_floor(argv[1], argv[2])
    if argv and argv[0] == "serve-gc":
        return _serve_gc(argv[1], argv[2], argv[3:])
    puts = 5000 if argv[:1] == ["gc"] else 2000
    keys = 10_000 if argv[:1] == ["gc-soak"] else 30_000
    rounds = 16 if argv[:1] == ["gc-soak"] else 2
    for a in argv:
        if a.startswith("--puts="):
            puts = int(a.split("=", 1)[1])
        elif a.startswith("--keys="):
            keys = int(a.split("=", 1)[1])
        elif a.startswith("--rounds="):
            rounds = int(a.split("=", 1)[1])
    if argv and argv[0] == "gc":
        return gc_compare(keys, puts, rounds)
    if argv and argv[0] == "gc-soak":
        return gc_soak(keys, rounds)
    if argv and argv[0] == "trace":
        return trace(puts)
    if argv and argv[0] == "floor":
        kinds = [a for a in argv[1:] if not a.startswith("--")] or list(FLOOR_KINDS)
        return floor(puts, kinds)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
