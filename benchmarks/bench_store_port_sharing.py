"""What sharing the client port between HTTP/1.1 and gRPC would cost (keel-store).

Run: ``nox -s bench -- store_port_sharing``.

etcd answers the JSON gateway, ``/health`` and ``/version`` on its client port (cmux).
grpcio cannot share a listening socket with an HTTP/1.1 server, and this grpcio exposes
no way to hand it an accepted connection (grpc core's
``grpc_server_add_insecure_channel_from_fd`` is not in ``grpc._cython.cygrpc``, and the
extension exports no C symbols). The remaining design is a sniffing acceptor in front of
grpcio that forwards gRPC connections to it. This measures sequential puts (the latency
case, where a forwarder hurts most) against keel-store directly and through three
forwarders:

* ``asyncio``: in the daemon's event loop (asyncio protocols, no extra copies in Python
  beyond the transport's);
* ``splice``: in the daemon process, two threads per connection moving bytes with
  ``os.splice`` through a pipe (the kernel copies, Python only waits);
* ``splice-process``: the same in a separate process (no GIL shared with the daemon).

It prints each figure and the ratio to the direct connection; nothing is asserted.
Options: ``--rounds=N`` (default 3), ``--puts=N`` (default 3000).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from keel_core.testing import free_port
from keel_store.pb import rpcgrpc, rpcpb

console = Console()
MODES = ("direct", "asyncio", "splice", "splice-process")
VALUE = b"v" * 256


class _Back(asyncio.Protocol):
    def __init__(self, front: _Front) -> None:
        self.front = front
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.front.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.transport.close()


class _Front(asyncio.Protocol):
    """Accepted client connection: forwards to grpcio (a real acceptor would sniff first)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transport: Any = None
        self.back: _Back | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.back = await loop.create_connection(lambda: _Back(self), *self.target)
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        assert self.back is not None
        self.back.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.back is not None:
            self.back.transport.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    r, w = os.pipe()
    try:
        while (n := os.splice(src.fileno(), w, 1 << 16)) > 0:
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def splice_forwarder(port: int, target: tuple[str, int]) -> threading.Thread:
    listener = socket.create_server(("127.0.0.1", port))

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            try:
                upstream = socket.create_connection(target)
            except OSError:  # the daemon is not listening yet
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


async def _serve(mode: str, grpc_port: int, front: int, peer: int, data_dir: str) -> None:
    from keel_store import daemon  # noqa: PLC0415 - only in the child

    args = daemon.parse_args(
        [
            "--name=m0",
            f"--data-dir={data_dir}",
            f"--listen-client-urls=http://127.0.0.1:{grpc_port}",
            f"--advertise-client-urls=http://127.0.0.1:{grpc_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        ]
    )
    target = ("127.0.0.1", grpc_port)
    if mode == "asyncio":
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: _Front(target), "127.0.0.1", front)
    elif mode == "splice":
        splice_forwarder(front, target)
    await daemon.serve(args)


async def _wait_ready(endpoint: str) -> None:
    """A fresh channel per attempt: a refused dial must not leave us in gRPC's backoff."""
    deadline = time.monotonic() + 60
    while True:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            try:
                await rpcgrpc.KVStub(channel).Range(rpcpb.RangeRequest(key=b"x"), timeout=1)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
        await asyncio.sleep(0.2)


async def _puts(endpoint: str, total: int) -> list[float]:
    await _wait_ready(endpoint)
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpcgrpc.KVStub(channel)
        for i in range(300):  # warm up
            await kv.Put(rpcpb.PutRequest(key=b"warm/%d" % i, value=VALUE))
        latencies = []
        for i in range(total):
            start = time.perf_counter()
            await kv.Put(rpcpb.PutRequest(key=b"seq/%08d" % i, value=VALUE))
            latencies.append(time.perf_counter() - start)
    return latencies


def one(mode: str, total: int) -> dict[str, float]:
    grpc_port, front, peer = free_port(), free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="keel-portshare-")
    serve_mode = "direct" if mode == "splice-process" else mode
    ports = [str(grpc_port), str(front), str(peer)]
    procs = [subprocess.Popen([sys.executable, __file__, "--serve", serve_mode, *ports, data_dir])]
    if mode == "splice-process":
        procs.append(
            subprocess.Popen([sys.executable, __file__, "--forward", str(front), str(grpc_port)])
        )
    try:
        endpoint = f"127.0.0.1:{grpc_port if mode == 'direct' else front}"
        latencies = asyncio.run(_puts(endpoint, total))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(data_dir, ignore_errors=True)
    latencies.sort()
    return {
        "puts/s": len(latencies) / sum(latencies),  # the client's pauses excluded
        "p50 ms": latencies[len(latencies) // 2] * 1000,
    }


def main(argv: list[str]) -> int:
    rounds = next((int(a.split("=")[1]) for a in argv if a.startswith("--rounds=")), 3)
    total = next((int(a.split("=")[1]) for a in argv if a.startswith("--puts=")), 3000)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES:  # interleaved, so machine noise hits every mode alike
            results[mode].append(one(mode, total))
            console.log(f"round {r + 1}/{rounds} {mode}: {results[mode][-1]}")
    table = Table(title=f"sequential puts, 1 member, median of {rounds} rounds")
    for column in ("mode", "puts/s", "p50 ms", "puts/s vs direct", "p50 vs direct"):
        table.add_column(column)
    base_rate = statistics.median(x["puts/s"] for x in results["direct"])
    base_p50 = statistics.median(x["p50 ms"] for x in results["direct"])
    for mode in MODES:
        rate = statistics.median(x["puts/s"] for x in results[mode])
        p50 = statistics.median(x["p50 ms"] for x in results[mode])
        table.add_row(
            mode, f"{rate:.0f}", f"{p50:.3f}", f"{rate / base_rate:.2f}x", f"{p50 / base_p50:.2f}x"
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        mode, grpc_port, front, peer, data_dir = sys.argv[2:7]
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(mode, int(grpc_port), int(front), int(peer), data_dir))
        sys.exit(0)
    if sys.argv[1:2] == ["--forward"]:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        splice_forwarder(int(sys.argv[2]), ("127.0.0.1", int(sys.argv[3]))).join()
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
