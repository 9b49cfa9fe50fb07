"""The Lease, Cluster and Maintenance services of etcd's v3 API."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from keel_store.bbolt import write_db
from keel_store.mvcc import errors
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.etcd_db import etcd_database_pieces, to_buckets
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server.kv_service import (
    Headers,
    abort,
    auth_user,
    check_quota,
    guarded,
    require,
    require_lease_keys,
    require_root,
)
from keel_store.server.members import member_id
from keel_store.server.node import StoreNode
from keel_store.server.snapshotter import (
    BytesStream,
    ChildStream,
    SnapshotChildError,
    stream_from_child,
)
from keel_store.server.transport import host_port

ETCD_VERSION = "3.4.23"
"""The etcd version we answer with: the API level we implement (what etcdctl checks)."""
CLUSTER_VERSION = "3.4.0"
SNAPSHOT_CHUNK = 32 * 1024
"""etcd's ``snapshotSendBufferSize``."""

log = logging.getLogger("keel_store.maintenance")


def _check_token(node: StoreNode, context: Any) -> None:
    """A token that is sent must be valid, even where no permission is needed (as etcd)."""
    if any(k == "token" for k, _ in context.invocation_metadata() or ()):
        auth_user(node, context)


class LeaseService(rpcgrpc.LeaseServicer):  # type: ignore[misc]
    """Lease: grant and revoke go through the log; keep-alives reach the leader's clock."""

    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self.headers = Headers(node)

    @guarded
    async def LeaseGrant(self, request: Any, context: Any) -> Any:
        """The TTL is raised to etcd's minimum; the ID is picked here when 0."""
        _check_token(self.node, context)
        await check_quota(self.node, 64)
        req = rpcpb.LeaseGrantRequest(
            TTL=max(request.TTL, self.node.config.min_lease_ttl),
            ID=request.ID or self.node.new_lease_id(),
        )
        resp = await self.node.propose(Kind.LEASE_GRANT, req)
        self.headers.fill(resp.header)
        return resp

    @guarded
    async def LeaseRevoke(self, request: Any, context: Any) -> Any:
        """Revoking deletes the lease's keys: it needs write permission on all of them."""
        _check_token(self.node, context)
        require_lease_keys(self.node, context, request.ID)
        resp = await self.node.propose(Kind.LEASE_REVOKE, request)
        self.headers.fill(resp.header)
        return resp

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """One response per request; TTL 0 means the lease is gone (etcd's convention).
        With ``hasleader`` (every clientv3 keep-alive) it needs a leader, as etcd's."""
        async with self.node.leader_gate.stream(context):
            async for req in request_iterator:
                try:
                    ttl = await self.node.keep_alive(req.ID)
                except EtcdError as exc:
                    await abort(context, exc)
                    return
                resp = rpcpb.LeaseKeepAliveResponse(ID=req.ID, TTL=ttl)
                self.headers.fill(resp.header)
                yield resp

    @guarded
    async def LeaseTimeToLive(self, request: Any, context: Any) -> Any:
        """TTL -1 when the lease does not exist (as etcd answers).

        With auth enabled, the caller needs read permission on every key attached to the
        lease (it would learn their names): etcd 3.4.26 and 3.5.9 added this check
        (CVE-2023-32082); 3.4.23 answers anyone.
        """
        await self.node.read_barrier()
        auth_user(self.node, context)
        lease = self.node.sm.leases.get(request.ID)
        for key in sorted(lease.keys if lease is not None else ()):
            require(self.node, context, key, b"", write=False)
        resp = rpcpb.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
        if lease is not None:
            resp.TTL = await self.node.lease_remaining(request.ID)
            resp.grantedTTL = lease.ttl
            if request.keys:
                resp.keys.extend(sorted(lease.keys))
        self.headers.fill(resp.header)
        return resp

    @guarded
    async def LeaseLeases(self, request: Any, context: Any) -> Any:
        await self.node.read_barrier()
        resp = rpcpb.LeaseLeasesResponse()
        for lease_id in sorted(self.node.sm.leases):
            resp.leases.add(ID=lease_id)
        self.headers.fill(resp.header)
        return resp


class ClusterService(rpcgrpc.ClusterServicer):  # type: ignore[misc]
    """Cluster: membership changes go through the log; Raft's configuration follows."""

    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self.headers = Headers(node)

    def _with_members(self, resp: Any) -> Any:
        del resp.members[:]
        resp.members.extend(self.node.member_list())
        # etcd's ClusterServer.header(): cluster, member and term, no revision.
        self.headers.fill(resp.header, revision=0)
        return resp

    @guarded
    async def MemberList(self, request: Any, context: Any) -> Any:
        return self._with_members(rpcpb.MemberListResponse())

    @guarded
    async def MemberAdd(self, request: Any, context: Any) -> Any:
        """The new member learns its ID from its peers when it starts (``server.identity``)."""
        require_root(self.node, context)
        urls = list(request.peerURLs)
        try:
            if not urls:
                raise ValueError("no peer URL")
            for url in urls:
                host_port(url)
        except ValueError:
            raise errors.MEMBER_BAD_URLS from None
        self.node.check_add(request.isLearner)
        # etcd's ID for an added member: its peer URLs and the time (no token), so a
        # member added again with the same URLs is a new member.
        member = rpcpb.Member(
            ID=member_id(urls, "", int(time.time())), peerURLs=urls, isLearner=request.isLearner
        )
        resp = await self.node.propose(Kind.MEMBER_ADD, member)
        return self._with_members(resp)

    @guarded
    async def MemberRemove(self, request: Any, context: Any) -> Any:
        require_root(self.node, context)
        self.node.check_remove(request.ID)
        return self._with_members(await self.node.propose(Kind.MEMBER_REMOVE, request))

    @guarded
    async def MemberUpdate(self, request: Any, context: Any) -> Any:
        require_root(self.node, context)
        return self._with_members(await self.node.propose(Kind.MEMBER_UPDATE, request))

    @guarded
    async def MemberPromote(self, request: Any, context: Any) -> Any:
        """Refused until the leader sees the learner's log within 90% of its own (etcd)."""
        require_root(self.node, context)
        if not await self.node.learner_ready(request.ID):
            raise errors.LEARNER_NOT_READY
        self.node.check_promote(request.ID)
        return self._with_members(await self.node.propose(Kind.MEMBER_PROMOTE, request))


class MaintenanceService(rpcgrpc.MaintenanceServicer):  # type: ignore[misc]
    """Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader."""

    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self.headers = Headers(node)

    @guarded
    async def Status(self, request: Any, context: Any) -> Any:
        node = self.node
        resp = rpcpb.StatusResponse(
            version=ETCD_VERSION,
            dbSize=node.disk_bytes(),
            dbSizeInUse=node.sm.in_use_bytes(),
            leader=node.leader_id,
            raftIndex=node.commit_index,
            raftTerm=node.term,
            raftAppliedIndex=node.applied_index,
        )
        if not node.leader_id:  # as etcd's Status: then the alarms
            resp.errors.append(errors.NO_LEADER.message)
        for member, kind in sorted(node.sm.alarms):
            resp.errors.append(f"memberID:{member} alarm:{rpcpb.AlarmType.Name(kind)}")
        self.headers.fill(resp.header)
        return resp

    @guarded
    async def Alarm(self, request: Any, context: Any) -> Any:
        """GET is a linearizable read; ACTIVATE/DEACTIVATE go through the log.

        With auth on, any user may list the alarms and only root may raise or disarm
        one: etcd 3.5's rule (3.4 checked neither, and 3.5.x fixed it)."""
        if request.action == rpcpb.AlarmRequest.GET:
            auth_user(self.node, context)
        else:
            require_root(self.node, context)
        if request.action == rpcpb.AlarmRequest.GET:
            await self.node.read_barrier()
            resp = self.node.sm.alarm(request)
        else:
            resp = await self.node.propose(Kind.ALARM, request)
        resp.ClearField("header")  # etcd 3.4's AlarmResponse carries none
        return resp

    @guarded
    async def Defragment(self, request: Any, context: Any) -> Any:
        """Nothing to defragment: the key space lives in memory, the log is rewritten."""
        require_root(self.node, context)
        return rpcpb.DefragmentResponse()  # no header, as etcd's

    @guarded
    async def Hash(self, request: Any, context: Any) -> Any:
        require_root(self.node, context)
        resp = rpcpb.HashResponse(hash=(await self.node.hash_kv_async())[0])
        self.headers.fill(resp.header)
        return resp

    @guarded
    async def HashKV(self, request: Any, context: Any) -> Any:
        require_root(self.node, context)
        value, _, compact = await self.node.hash_kv_async(request.revision)
        resp = rpcpb.HashKVResponse(hash=value, compact_revision=compact)
        self.headers.fill(resp.header)  # the current revision, as etcd answers
        return resp

    async def Snapshot(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """The state as etcd's bbolt database, streamed in chunks, then its SHA-256."""
        try:
            require_root(self.node, context)
        except EtcdError as exc:
            await abort(context, exc)
            return
        node = self.node
        stream: ChildStream | BytesStream | None = None
        digest = hashlib.sha256()
        try:
            if node.config.background_snapshots:
                # Rows and pages in a forked child, from the state as it is now: the
                # loop goes on serving (it took ~0.34 s per 50k keys on the loop).
                stream = await stream_from_child(node.sm, etcd_database_pieces)
            else:
                stream = BytesStream(await asyncio.to_thread(write_db, to_buckets(node.sm)))
            sent = 0
            while sent < stream.size:
                chunk = await stream.read(min(SNAPSHOT_CHUNK, stream.size - sent))
                sent += len(chunk)
                digest.update(chunk)
                # As etcd 3.4's: no header; the SHA-256 in a last message of its own.
                yield rpcpb.SnapshotResponse(remaining_bytes=stream.size - sent, blob=chunk)
            await stream.finish()
        except SnapshotChildError as exc:
            log.error("snapshot for a client failed: %s", exc)
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
            return
        finally:
            if stream is not None:
                stream.close()
        yield rpcpb.SnapshotResponse(remaining_bytes=0, blob=digest.digest())

    @guarded
    async def MoveLeader(self, request: Any, context: Any) -> Any:
        require_root(self.node, context)
        node = self.node
        if not node.is_leader:
            raise errors.NOT_LEADER
        target = node.sm.members.get(request.targetID)
        if target is None or target.is_learner:
            raise errors.BAD_LEADER_TRANSFEREE
        # As etcd's: wait until the target leads or the client's deadline passes (the
        # server then ends the call "context deadline exceeded", as etcd's client sees).
        await node.transfer_leadership(request.targetID, context.time_remaining())
        return rpcpb.MoveLeaderResponse()  # no header, as etcd's
