"""A small, synchronous etcd v3 client for Keel's components.

It speaks the plain v3 gRPC protocol, so it works against keel-store and real etcd
alike (the host tests run it against both). It covers what the supervisor, the
updater and service discovery need: gets (prefix, revision, limit), puts, deletes,
transactions with the usual idioms (create-if-absent, compare-and-swap), watches
from a revision, leases with keep-alive, status and member list. Several endpoints
may be given: on a connection failure the client moves to the next one; reads are
retried there, writes only when they certainly did not reach a server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from keel_store.pb import rpcgrpc, rpcpb

__all__ = ["KV", "Client", "Event", "Lease", "StoreError", "prefix_end"]


class StoreError(Exception):
    """A failed request: the gRPC code name and the server's message (etcd's text)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class KV:
    """One key's version, as a server returned it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv: Any) -> KV:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(frozen=True)
class Event:
    """A change seen by a watch: ``type`` is ``"PUT"`` or ``"DELETE"``."""

    type: str
    kv: KV
    prev_kv: KV | None
    revision: int


@dataclass(frozen=True)
class Lease:
    """A granted lease."""

    id: int
    ttl: int


def prefix_end(prefix: bytes) -> bytes:
    """``range_end`` selecting every key that starts with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else b"\0"


def _b(x: str | bytes) -> bytes:
    return x.encode() if isinstance(x, str) else x


_RETRY_SAFE = (grpc.StatusCode.UNAVAILABLE,)


def _never_sent(code: grpc.StatusCode, details: str) -> bool:
    """Whether a failed call certainly never reached a server: no connection could be
    made. A connection that broke after the request was sent ("Socket closed",
    "Connection reset by peer") is also UNAVAILABLE, but the server may have applied
    the request: only idempotent calls are retried then (etcd's clientv3 retries a
    mutation only when no connection was available, ``isSafeRetryMutableRPC``)."""
    return code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower()


class Client:
    """A connection to a store (keel-store or etcd) through one of ``endpoints``."""

    def __init__(
        self,
        endpoints: Sequence[str] | str = "127.0.0.1:2379",
        *,
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        self.endpoints = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
        if not self.endpoints:
            raise ValueError("Client: give at least one endpoint")
        self.timeout = timeout
        self._credentials = credentials
        self._index = 0
        self._lock = threading.Lock()
        self._connect()

    def _connect(self) -> None:
        target = self.endpoints[self._index]
        if self._credentials is not None:
            self._channel = grpc.secure_channel(target, self._credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        self.kv = rpcgrpc.KVStub(self._channel)
        self.watch_stub = rpcgrpc.WatchStub(self._channel)
        self.lease_stub = rpcgrpc.LeaseStub(self._channel)
        self.cluster_stub = rpcgrpc.ClusterStub(self._channel)
        self.maintenance = rpcgrpc.MaintenanceStub(self._channel)

    def _rotate(self) -> None:
        with self._lock:
            self._channel.close()
            self._index = (self._index + 1) % len(self.endpoints)
            self._connect()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, stub: str, method: str, request: Any, *, idempotent: bool) -> Any:
        attempts = len(self.endpoints) if len(self.endpoints) > 1 else 1
        for attempt in range(attempts):
            try:
                return getattr(getattr(self, stub), method)(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                details = exc.details() or ""
                if attempt + 1 < attempts and (
                    _never_sent(code, details) or (idempotent and code in _RETRY_SAFE)
                ):
                    self._rotate()
                    continue
                raise StoreError(code.name, details) from None
        raise AssertionError("unreachable")

    # --- KV -------------------------------------------------------------------------------

    def range(self, request: Any) -> Any:
        """KV.Range with a full ``RangeRequest`` (every option)."""
        return self._call("kv", "Range", request, idempotent=True)

    def get(
        self,
        key: str | bytes,
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
    ) -> list[KV]:
        """The keys at ``key`` (or under the prefix), at ``revision`` (0: latest)."""
        k = _b(key)
        req = rpcpb.RangeRequest(
            key=k,
            range_end=prefix_end(k) if prefix else b"",
            revision=revision,
            limit=limit,
            serializable=serializable,
            keys_only=keys_only,
        )
        return [KV.from_pb(kv) for kv in self.range(req).kvs]

    def get_one(self, key: str | bytes) -> KV | None:
        """One key, or ``None``."""
        found = self.get(key)
        return found[0] if found else None

    def put(self, key: str | bytes, value: str | bytes, *, lease: int = 0) -> int:
        """Write a key; returns the new store revision."""
        req = rpcpb.PutRequest(key=_b(key), value=_b(value), lease=lease)
        return int(self._call("kv", "Put", req, idempotent=False).header.revision)

    def delete(self, key: str | bytes, *, prefix: bool = False) -> int:
        """Delete a key (or a prefix); returns how many were deleted."""
        k = _b(key)
        req = rpcpb.DeleteRangeRequest(key=k, range_end=prefix_end(k) if prefix else b"")
        return int(self._call("kv", "DeleteRange", req, idempotent=False).deleted)

    def txn(self, request: Any) -> Any:
        """KV.Txn with a full ``TxnRequest``."""
        return self._call("kv", "Txn", request, idempotent=False)

    def put_if_absent(self, key: str | bytes, value: str | bytes, *, lease: int = 0) -> bool:
        """Create ``key`` only if it does not exist; True if this call created it."""
        k = _b(key)
        cmp = rpcpb.Compare(
            key=k, target=rpcpb.Compare.CREATE, result=rpcpb.Compare.EQUAL, create_revision=0
        )
        put = rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=k, value=_b(value), lease=lease))
        return bool(self.txn(rpcpb.TxnRequest(compare=[cmp], success=[put])).succeeded)

    def compare_and_swap(self, key: str | bytes, mod_revision: int, value: str | bytes) -> bool:
        """Write ``key`` only if its mod revision is still ``mod_revision``."""
        k = _b(key)
        cmp = rpcpb.Compare(
            key=k, target=rpcpb.Compare.MOD, result=rpcpb.Compare.EQUAL, mod_revision=mod_revision
        )
        put = rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=k, value=_b(value)))
        return bool(self.txn(rpcpb.TxnRequest(compare=[cmp], success=[put])).succeeded)

    def compact(self, revision: int, *, physical: bool = False) -> None:
        """Forget history before ``revision``."""
        req = rpcpb.CompactionRequest(revision=revision, physical=physical)
        self._call("kv", "Compact", req, idempotent=True)

    # --- watch ----------------------------------------------------------------------------

    def watch(
        self,
        key: str | bytes,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
    ) -> Watch:
        """A watch from ``start_revision`` (0: from now). Iterate it; ``cancel()`` it."""
        k = _b(key)
        create = rpcpb.WatchCreateRequest(
            key=k,
            range_end=prefix_end(k) if prefix else b"",
            start_revision=start_revision,
            prev_kv=prev_kv,
        )
        return Watch(self.watch_stub, create)

    # --- leases ---------------------------------------------------------------------------

    def lease_grant(self, ttl: int, lease_id: int = 0) -> Lease:
        """Grant a lease (the server may raise ``ttl`` to its minimum)."""
        resp = self._call(
            "lease_stub",
            "LeaseGrant",
            rpcpb.LeaseGrantRequest(TTL=ttl, ID=lease_id),
            idempotent=False,
        )
        return Lease(resp.ID, resp.TTL)

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease; its keys are deleted."""
        self._call(
            "lease_stub", "LeaseRevoke", rpcpb.LeaseRevokeRequest(ID=lease_id), idempotent=True
        )

    def lease_keep_alive_once(self, lease_id: int) -> int:
        """Renew once; returns the TTL (0: the lease no longer exists)."""
        responses = self.lease_stub.LeaseKeepAlive(
            iter([rpcpb.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self.timeout
        )
        try:
            for resp in responses:
                return int(resp.TTL)
        except grpc.RpcError as exc:
            raise StoreError(exc.code().name, exc.details() or "") from None
        return 0

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> Any:
        """Lease.LeaseTimeToLive (TTL -1: no such lease)."""
        req = rpcpb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        return self._call("lease_stub", "LeaseTimeToLive", req, idempotent=True)

    def keep_alive_forever(self, lease_id: int, interval: float) -> threading.Event:
        """Renew ``lease_id`` every ``interval`` s in a daemon thread; set the event to stop."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                try:
                    if self.lease_keep_alive_once(lease_id) == 0:
                        return
                except StoreError:
                    continue

        threading.Thread(target=run, name=f"keepalive-{lease_id:x}", daemon=True).start()
        return stop

    # --- cluster --------------------------------------------------------------------------

    def status(self) -> Any:
        """Maintenance.Status of the current endpoint."""
        return self._call("maintenance", "Status", rpcpb.StatusRequest(), idempotent=True)

    def members(self) -> list[Any]:
        """Cluster.MemberList."""
        resp = self._call("cluster_stub", "MemberList", rpcpb.MemberListRequest(), idempotent=True)
        return list(resp.members)


class Watch:
    """An open watch stream; iterate for :class:`Event` s."""

    def __init__(self, stub: Any, create: Any) -> None:
        self._requests: list[Any] = [rpcpb.WatchRequest(create_request=create)]
        self._cond = threading.Condition()
        self._closed = False
        self._stream = stub.Watch(self._request_iter())
        self.watch_id: int | None = None
        self.compact_revision = 0

    def _request_iter(self) -> Iterator[Any]:
        while True:
            with self._cond:
                while not self._requests and not self._closed:
                    self._cond.wait()
                if self._closed and not self._requests:
                    return
                req = self._requests.pop(0)
            yield req

    def __iter__(self) -> Iterator[Event]:
        try:
            for resp in self._stream:
                if resp.created:
                    self.watch_id = resp.watch_id
                if resp.compact_revision:
                    self.compact_revision = resp.compact_revision
                    raise StoreError(
                        "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted"
                    )
                if resp.canceled:
                    return
                for e in resp.events:
                    yield Event(
                        "PUT" if e.type == 0 else "DELETE",
                        KV.from_pb(e.kv),
                        KV.from_pb(e.prev_kv) if e.HasField("prev_kv") else None,
                        e.kv.mod_revision,
                    )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise StoreError(exc.code().name, exc.details() or "") from None

    def cancel(self) -> None:
        """Close the stream."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stream.cancel()
