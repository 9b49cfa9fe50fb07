"""etcd's grpc-gateway JSON API (``POST /v3/...``), ``/health``, ``/version``, ``/metrics``.

Served, as etcd does, on the client port next to gRPC: ``grpc_server`` hands every
connection that does not open with the HTTP/2 preface to ``serve_connection``; and on
``--listen-metrics-urls`` (where etcd also answers ``/health`` and ``/metrics``).

Bodies are the request messages in proto3 JSON, as with etcd: bytes in base64, 64-bit
integers as strings, proto field names; errors come back as ``{"error", "message",
"code"}``. ``/v3/watch`` streams newline-separated ``{"result": WatchResponse}``
objects, ``/v3/election/observe`` the leaders as ``{"result": LeaderResponse}``.
``/v3beta/`` is accepted as an alias of ``/v3/``. A call that can wait long
(``/v3/lock/lock``, ``/v3/election/campaign``) is cancelled when its client goes away,
as Go cancels a request's context when the connection closes, so it cleans up as a
gRPC call does.

On the client URLs, an :class:`AccessPolicy` applies etcd's ``--host-whitelist`` and
``--cors`` (etcd's ``accessController``, embed/serve.go): a plain-HTTP request whose
Host is not listed gets 421, every answer carries the CORS headers for an allowed
Origin, and OPTIONS (a preflight) is answered 200 with no body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc

from keel_store.mvcc import validate
from keel_store.mvcc.errors import EtcdError
from keel_store.pb import electionpb, lockpb, rpcpb
from keel_store.server import debug_vars, gateway_json, metrics
from keel_store.server.auth_service import AuthService
from keel_store.server.election_service import ElectionService
from keel_store.server.exposition import CONTENT_TYPE as METRICS_CONTENT_TYPE
from keel_store.server.gateway_mux import Answer, Call, Page, Target, resolve
from keel_store.server.gateway_streams import (
    BodyTooLarge,
    CallError,
    chunk,
    error_doc,
    http_status,
    json_doc,
    read_body,
    serve_stream,
    status_line,
    to_json,
)
from keel_store.server.grpc_metrics import GrpcStats
from keel_store.server.kv_service import Headers, KVService
from keel_store.server.lock_service import LockService
from keel_store.server.node import StoreNode
from keel_store.server.other_services import (
    CLUSTER_VERSION,
    ETCD_VERSION,
    ClusterService,
    LeaseService,
    MaintenanceService,
)
from keel_store.server.watch_stream import WatchService

log = logging.getLogger("keel_store.gateway")
MAX_BODY = 4 << 20
ALL_PAGES = ("health", "version", "metrics", "vars")
METRICS_PAGES = ("health", "metrics")
BLOCKING = frozenset({"lock/lock", "election/campaign"})
"""Unary routes that wait (for a lock, for leadership): cancelled if the client leaves."""


class _Context:
    """The little of grpc's ServicerContext the services use."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("token", self.token),) if self.token else ()

    def time_remaining(self) -> float | None:
        """No deadline: an HTTP request carries none (grpc-gateway sets none either)."""
        return None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise CallError(code, message)


CORS_METHODS = b"POST, GET, OPTIONS, PUT, DELETE"
CORS_HEADERS = b"accept, content-type, authorization"
GRPC_METADATA = b"Grpc-Metadata-Content-Type: application/grpc\r\n"
"""The header grpc-gateway copies from the gRPC answer's metadata onto a success."""


def is_origin(text: str) -> bool:
    """Whether ``text`` is an origin ``--cors`` can name: scheme://host[:port], no path."""
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (
        url.scheme in ("http", "https")
        and bool(url.hostname)
        and url.path in ("", "/")
        and not (url.query or url.fragment)
    )


def hostname(host: str) -> str:
    """The Host header without its port (Go's net.SplitHostPort; as it is if no port)."""
    if host.startswith("["):
        end = host.find("]")
        if end > 0 and host[end + 1 : end + 2] == ":":
            return host[1:end]
        return host
    name, colon, _ = host.rpartition(":")
    if not colon or ":" in name:
        return host
    return name


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    """etcd's ``--cors`` and ``--host-whitelist`` (None: any origin / any host)."""

    cors: frozenset[str] | None = None
    hosts: frozenset[str] | None = None

    def host_allowed(self, host: str) -> bool:
        return self.hosts is None or hostname(host) in self.hosts

    def cors_headers(self, origin: str | None) -> bytes:
        """Header lines to add to the answer (empty for an origin not allowed)."""
        if self.cors is None:
            allowed = "*"
        elif origin is not None and origin in self.cors:
            allowed = origin
        else:
            return b""
        return (
            b"Access-Control-Allow-Methods: " + CORS_METHODS + b"\r\n"
            b"Access-Control-Allow-Origin: " + allowed.encode("latin-1") + b"\r\n"
            b"Access-Control-Allow-Headers: " + CORS_HEADERS + b"\r\n"
        )


def misdirected(host: str) -> bytes:
    """The body etcd answers a Host not in ``--host-whitelist`` with (CVE-2018-5702)."""
    return (
        "\nkeel-store received your request, but the Host header was unrecognized.\n\n"
        "To fix this, choose one of the following options:\n"
        "- Enable TLS, then any HTTPS request will be allowed.\n"
        "- Add the hostname you want to use to the whitelist in settings.\n"
        f"  - e.g. keel-store --host-whitelist {json.dumps(hostname(host))}\n\n"
        'This requirement has been added to help prevent "DNS Rebinding" attacks'
        " (CVE-2018-5702).\n\n"
    ).encode()


DISCARD_MAX = 64 << 20
"""An oversize body is read and dropped up to this size; a larger one is not waited for."""


async def _discard(reader: asyncio.StreamReader, size: int) -> None:
    left = size if size <= DISCARD_MAX else 0
    while left > 0:
        left -= len(await reader.readexactly(min(left, 1 << 20)))


class Gateway:
    """Routes JSON requests to the same service objects the gRPC server uses."""

    def __init__(
        self,
        node: StoreNode,
        kv: KVService,
        grpc_stats: GrpcStats | None = None,
        access: AccessPolicy | None = None,
        *,
        json_api: bool = True,
        watch: WatchService | None = None,
        metrics_only: bool = False,
        max_message: int = validate.DEFAULT_MAX_REQUEST_BYTES + validate.GRPC_OVERHEAD_BYTES,
    ) -> None:
        self.node = node
        self.json_api = json_api and not metrics_only
        self.max_message = max_message
        """The gRPC server's limit on a request message: etcd's gateway forwards to it,
        so a larger request gets gRPC's ResourceExhausted (429)."""
        self.max_body = max(MAX_BODY, 3 * max_message)
        """Bodies read at most (JSON and base64 make a message's body ~4/3 larger)."""
        self.pages = METRICS_PAGES if metrics_only else ALL_PAGES
        """The ``/`` pages served: a ``--listen-metrics-urls`` listener serves only
        ``/metrics`` and ``/health`` (etcd's ``HandleMetricsHealth``), not the JSON API."""
        """``--enable-grpc-gateway``: serve ``/v3/...``; off, they are not found."""
        self.access = access
        """--cors and --host-whitelist; None (the metrics URLs): neither applies."""
        self.grpc_stats = grpc_stats
        self.headers = Headers(node)
        lease, cluster, maint = LeaseService(node), ClusterService(node), MaintenanceService(node)
        au = AuthService(node)
        watch = watch if watch is not None else WatchService(node)
        lock, election = LockService(node, kv), ElectionService(node, kv)
        r, lk, el = rpcpb, lockpb, electionpb
        self.routes: dict[str, tuple[Callable[..., Any], type[Any]]] = {
            "kv/range": (kv.Range, r.RangeRequest),
            "kv/put": (kv.Put, r.PutRequest),
            "kv/deleterange": (kv.DeleteRange, r.DeleteRangeRequest),
            "kv/txn": (kv.Txn, r.TxnRequest),
            "kv/compaction": (kv.Compact, r.CompactionRequest),
            "lease/grant": (lease.LeaseGrant, r.LeaseGrantRequest),
            "lease/revoke": (lease.LeaseRevoke, r.LeaseRevokeRequest),
            "kv/lease/revoke": (lease.LeaseRevoke, r.LeaseRevokeRequest),
            "lease/timetolive": (lease.LeaseTimeToLive, r.LeaseTimeToLiveRequest),
            "kv/lease/timetolive": (lease.LeaseTimeToLive, r.LeaseTimeToLiveRequest),
            "lease/leases": (lease.LeaseLeases, r.LeaseLeasesRequest),
            "kv/lease/leases": (lease.LeaseLeases, r.LeaseLeasesRequest),
            "cluster/member/list": (cluster.MemberList, r.MemberListRequest),
            "cluster/member/add": (cluster.MemberAdd, r.MemberAddRequest),
            "cluster/member/remove": (cluster.MemberRemove, r.MemberRemoveRequest),
            "cluster/member/update": (cluster.MemberUpdate, r.MemberUpdateRequest),
            "cluster/member/promote": (cluster.MemberPromote, r.MemberPromoteRequest),
            "maintenance/status": (maint.Status, r.StatusRequest),
            "maintenance/alarm": (maint.Alarm, r.AlarmRequest),
            "maintenance/defragment": (maint.Defragment, r.DefragmentRequest),
            "maintenance/hash": (maint.Hash, r.HashRequest),
            "maintenance/hashkv": (maint.HashKV, r.HashKVRequest),
            "maintenance/transfer-leadership": (maint.MoveLeader, r.MoveLeaderRequest),
            "auth/enable": (au.AuthEnable, r.AuthEnableRequest),
            "auth/disable": (au.AuthDisable, r.AuthDisableRequest),
            "auth/authenticate": (au.Authenticate, r.AuthenticateRequest),
            "auth/user/add": (au.UserAdd, r.AuthUserAddRequest),
            "auth/user/get": (au.UserGet, r.AuthUserGetRequest),
            "auth/user/list": (au.UserList, r.AuthUserListRequest),
            "auth/user/delete": (au.UserDelete, r.AuthUserDeleteRequest),
            "auth/user/changepw": (au.UserChangePassword, r.AuthUserChangePasswordRequest),
            "auth/user/grant": (au.UserGrantRole, r.AuthUserGrantRoleRequest),
            "auth/user/revoke": (au.UserRevokeRole, r.AuthUserRevokeRoleRequest),
            "auth/role/add": (au.RoleAdd, r.AuthRoleAddRequest),
            "auth/role/get": (au.RoleGet, r.AuthRoleGetRequest),
            "auth/role/list": (au.RoleList, r.AuthRoleListRequest),
            "auth/role/delete": (au.RoleDelete, r.AuthRoleDeleteRequest),
            "auth/role/grant": (au.RoleGrantPermission, r.AuthRoleGrantPermissionRequest),
            "auth/role/revoke": (au.RoleRevokePermission, r.AuthRoleRevokePermissionRequest),
            "lock/lock": (lock.Lock, lk.LockRequest),
            "lock/unlock": (lock.Unlock, lk.UnlockRequest),
            "election/campaign": (election.Campaign, el.CampaignRequest),
            "election/proclaim": (election.Proclaim, el.ProclaimRequest),
            "election/leader": (election.Leader, el.LeaderRequest),
            "election/resign": (election.Resign, el.ResignRequest),
        }
        self.streams: dict[str, tuple[Callable[..., Any], type[Any], bool]] = {
            "watch": (watch.Watch, r.WatchRequest, True),
            "lease/keepalive": (lease.LeaseKeepAlive, r.LeaseKeepAliveRequest, True),
            "maintenance/snapshot": (maint.Snapshot, r.SnapshotRequest, False),
            "election/observe": (election.Observe, el.LeaderRequest, False),
        }
        """Streaming calls: (service method, request type, requests streamed too)."""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.calls = 0
        """Requests being answered now (watches not counted)."""

    async def listen(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self.serve_connection, host, port)

    async def close(self) -> None:
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # --- HTTP/1.1, just enough ---------------------------------------------------------

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                where = resolve(
                    method,
                    path,
                    json_api=self.json_api,
                    unary=self.routes,
                    streams=self.streams,
                    pages=self.pages,
                )
                stream = where if isinstance(where, Call) and where.stream else None
                body = b""
                if stream is None:
                    try:
                        body = await read_body(reader, headers, self.max_body)
                    except BodyTooLarge as exc:
                        if "chunked" not in headers.get("transfer-encoding", "").lower():
                            # Read what the client is sending before answering, so that
                            # it sees the answer rather than a reset connection.
                            await _discard(reader, exc.size)
                        await self._send_status(writer, self.too_large(exc.size), b"")
                        return
                extra = b""
                if self.access is not None:
                    host = headers.get("host", "")
                    if writer.get_extra_info("ssl_object") is None and not (
                        self.access.host_allowed(host)
                    ):
                        log.warning(
                            "rejecting HTTP request to prevent DNS rebinding attacks",
                            extra={"host": hostname(host)},
                        )
                        await self._send(
                            writer,
                            421,
                            misdirected(host),
                            "text/plain; charset=utf-8",
                            b"X-Content-Type-Options: nosniff\r\n",
                        )
                        continue
                    extra = self.access.cors_headers(headers.get("origin"))
                    if method == "OPTIONS":
                        await self._send(writer, 200, b"", None, extra)
                        continue
                if stream is not None:
                    handler, request_type, both_ways = self.streams[stream.name]
                    await serve_stream(
                        handler,
                        request_type,
                        both_ways=both_ways,
                        context=_Context(headers.get("authorization")),
                        reader=reader,
                        writer=writer,
                        headers=headers,
                        extra=extra,
                        limit=MAX_BODY,
                    )
                    return
                await self._answer(
                    writer, where, body, headers.get("authorization"), extra, reader=reader
                )
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        content_type: str | None = "application/json",
        extra: bytes = b"",
    ) -> None:
        """One answer; ``extra``: more header lines, each ending in CRLF."""
        typed = f"Content-Type: {content_type}\r\n" if content_type else ""
        writer.write(
            f"HTTP/1.1 {status_line(status)}\r\n{typed}".encode()
            + extra
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        where: Target,
        body: bytes,
        token: str | None,
        extra: bytes,
        *,
        reader: asyncio.StreamReader | None = None,
    ) -> None:
        """Answer a request that is not a streaming call (``reader``: the connection's,
        watched for the client leaving during a :data:`BLOCKING` call)."""
        if isinstance(where, Answer):
            await self._send(
                writer, where.status, where.body, where.content_type, extra + where.headers
            )
        elif isinstance(where, Page) and where.name == "metrics":
            payload = metrics.exposition(self.node, self.grpc_stats)
            await self._send(writer, 200, payload, METRICS_CONTENT_TYPE, extra)
        elif isinstance(where, Page) and where.name == "vars":
            payload = debug_vars.page(self.node.raft)
            await self._send(writer, 200, payload, "application/json; charset=utf-8", extra)
        elif isinstance(where, Page):
            status, payload = await self._page(where.name)
            # etcd writes /health without a type (Go's sniffing calls it text).
            kind = "text/plain; charset=utf-8" if where.name == "health" else "application/json"
            await self._send(writer, status, payload, kind, extra)
        else:
            await self._call(writer, where.name, body, token, extra, reader=reader)

    async def _page(self, name: str) -> tuple[int, bytes]:
        """``GET /version`` or ``GET /health``."""
        if name == "version":
            return 200, json_doc({"etcdserver": ETCD_VERSION, "etcdcluster": CLUSTER_VERSION})
        try:
            await self.node.read_barrier()
        except EtcdError as exc:
            self.node.stats.health_failures += 1
            return 503, json_doc({"health": "false", "reason": exc.message})
        self.node.stats.health_success += 1
        return 200, b'{"health":"true"}'

    @staticmethod
    async def _send_status(writer: asyncio.StreamWriter, exc: CallError, extra: bytes) -> None:
        """A gRPC status as grpc-gateway answers it: its trailer metadata comes along."""
        payload = error_doc(exc.code.value[0], exc.message)
        writer.write(
            f"HTTP/1.1 {status_line(http_status(exc.code))}\r\n"
            "Content-Type: application/json\r\n".encode()
            + extra
            + b"Trailer: Grpc-Trailer-Content-Type\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk(payload)
            + b"0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n"
        )
        await writer.drain()

    def too_large(self, size: int) -> CallError:
        """gRPC's refusal of a request message of ``size`` bytes over the limit."""
        return CallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"grpc: received message larger than max ({size} vs. {self.max_message})",
        )

    async def _call(
        self,
        writer: asyncio.StreamWriter,
        name: str,
        body: bytes,
        token: str | None,
        extra: bytes,
        *,
        reader: asyncio.StreamReader | None = None,
    ) -> None:
        """A unary call, answered as grpc-gateway's ForwardResponseMessage / HTTPError."""
        handler, request_type = self.routes[name]
        try:
            request = gateway_json.decode(body, request_type)
        except gateway_json.BodyError as exc:
            await self._send(writer, 400, error_doc(3, str(exc)), extra=extra)
            return
        self.calls += 1
        try:
            size = request.ByteSize()
            if size > self.max_message:
                raise self.too_large(size)
            call = handler(request, _Context(token))
            if name in BLOCKING and reader is not None:
                response = await until_answered_or_gone(call, reader)
            else:
                response = await call
        except CallError as exc:
            await self._send_status(writer, exc, extra)
            return
        finally:
            self.calls -= 1
        await self._send(writer, 200, to_json(response), extra=extra + GRPC_METADATA)


async def until_answered_or_gone(call: Any, reader: asyncio.StreamReader) -> Any:
    """Await ``call`` unless the client closes (or resets) the connection first: the
    call is then cancelled (it cleans up) and ``ConnectionError`` raised. Bytes the
    client sends meanwhile (a pipelined request) are kept, the connection still
    watched, and put back for the connection's next read."""
    task = asyncio.ensure_future(call)
    kept = bytearray()
    try:
        while True:
            gone = asyncio.ensure_future(reader.read(1 << 16))
            try:
                await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not gone.done():
                    gone.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await gone
            data = b""
            if not gone.cancelled():
                try:
                    data = gone.result()
                except (ConnectionError, OSError):
                    data = b""
                if data:
                    kept += data
            if task.done():
                return task.result()
            if not data or len(kept) > MAX_KEPT:
                # Gone (EOF or reset); or a client pipelining without end, whose call
                # is given up rather than its bytes kept.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise ConnectionError("the client went away")
    finally:
        if kept:
            _unread(reader, bytes(kept))
        if not task.done():  # this call itself was cancelled
            task.cancel()


MAX_KEPT = 1 << 20
"""Bytes a client may pipeline behind a waiting Lock or Campaign."""


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Put ``data`` back at the front of ``reader``'s buffer (read while watching)."""
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009 - no public unread
    buffer[0:0] = data
