"""etcd's Election service (v3election: ``/v3electionpb.Election/Campaign``, ``/Proclaim``,
``/Leader``, ``/Observe``, ``/Resign``), as etcd 3.4 serves it with clientv3/concurrency's
Election (see :mod:`keel_store.server.concurrency`).

* Campaign puts ``<name>/<lease-hex>`` with the value and the lease (a new 60 s lease
  when the request names none) unless it exists (then proclaims the new value), waits
  until every key under ``<name>/`` created before it is deleted, and answers the
  header of its first write with the LeaderKey ``{name, key, rev, lease}``. A Campaign
  whose client goes away while waiting resigns.
* Proclaim and Resign act only while the leader key still has the create revision
  the LeaderKey names: Proclaim otherwise fails with "election: not leader"; Resign
  then does nothing and succeeds. Both need the ``leader`` field. With lease 0 both
  grant a 60 s lease first, as etcd's session does (Proclaim puts the value with it).
* Leader is the key under ``<name>/`` with the lowest create revision ("election: no
  leader" without one); Observe streams it, then every new value of it, then the next
  leader once it is deleted; without a leader it waits for the first put. Observe ends
  (without an error, as etcd's) when a read or a watch underneath fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.keyspace import prefix_end
from keel_store.pb import electiongrpc, electionpb, mvccpb, rpcpb
from keel_store.server.concurrency import (
    CallerClients,
    Client,
    InnerError,
    cleanup,
    first_create,
    served,
)

NOT_LEADER = "election: not leader"
"""clientv3/concurrency ``ErrElectionNotLeader``."""
NO_LEADER = "election: no leader"
"""clientv3/concurrency ``ErrElectionNoLeader``."""
MISSING_LEADER_KEY = '"leader" field must be provided'
"""v3election ``ErrMissingLeaderKey``."""


def _put(key: bytes, value: bytes, lease: int) -> rpcpb.RequestOp:
    return rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=key, value=value, lease=lease))


def _created(key: bytes, revision: int) -> rpcpb.Compare:
    return rpcpb.Compare(
        key=key, target=rpcpb.Compare.CREATE, result=rpcpb.Compare.EQUAL, create_revision=revision
    )


class ElectionService(CallerClients, electiongrpc.ElectionServicer):  # type: ignore[misc]
    """Campaign, Proclaim, Leader, Observe, Resign, on the caller's KV and lease calls."""

    @staticmethod
    async def _proclaim(
        client: Client, key: bytes, revision: int, lease: int, value: bytes
    ) -> rpcpb.TxnResponse:
        resp = await client.if_created_at(key, revision, _put(key, value, lease))
        if not resp.succeeded:
            raise InnerError(NOT_LEADER)
        return resp

    @staticmethod
    async def _resign(client: Client, key: bytes, revision: int) -> rpcpb.TxnResponse:
        delete = rpcpb.RequestOp(request_delete_range=rpcpb.DeleteRangeRequest(key=key))
        return await client.if_created_at(key, revision, delete)

    @served
    async def Campaign(self, request: Any, context: Any) -> Any:
        """Become the leader of ``name`` (wait for it), with ``value``."""
        client = self._client(context)
        lease, prefix, key = await client.own_key(request.name, request.lease)
        txn = rpcpb.TxnRequest(
            compare=[_created(key, 0)],
            success=[_put(key, request.value, lease)],
            failure=[rpcpb.RequestOp(request_range=rpcpb.RangeRequest(key=key))],
        )
        resp = await client.txn(txn)
        revision = resp.header.revision
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            revision = kv.create_revision
            if kv.value != request.value:
                try:
                    await self._proclaim(client, key, revision, lease, request.value)
                except (InnerError, EtcdError) as exc:
                    if str(exc) != NOT_LEADER:  # etcd forgot the key then: nothing to resign
                        await cleanup(lambda: self._resign(client, key, revision))
                    raise
        try:
            await client.wait_deletes(prefix, revision - 1)
        except asyncio.CancelledError:
            await cleanup(lambda: self._resign(client, key, revision))
            raise
        leader = electionpb.LeaderKey(name=request.name, key=key, rev=revision, lease=lease)
        return electionpb.CampaignResponse(header=resp.header, leader=leader)

    @served
    async def Proclaim(self, request: Any, context: Any) -> Any:
        """A new value from the leader named by ``leader``."""
        if not request.HasField("leader"):
            raise InnerError(MISSING_LEADER_KEY)
        client = self._client(context)
        leader = request.leader
        lease = await client.session(leader.lease)
        resp = await self._proclaim(client, leader.key, leader.rev, lease, request.value)
        return electionpb.ProclaimResponse(header=resp.header)

    @served
    async def Resign(self, request: Any, context: Any) -> Any:
        """Give up leadership: delete the leader key if it is still this leader's."""
        if not request.HasField("leader"):
            raise InnerError(MISSING_LEADER_KEY)
        client = self._client(context)
        await client.session(request.leader.lease)
        resp = await self._resign(client, request.leader.key, request.leader.rev)
        return electionpb.ResignResponse(header=resp.header)

    @served
    async def Leader(self, request: Any, context: Any) -> Any:
        """The current leader's key-value."""
        resp = await self._client(context).range(first_create(request.name + b"/"))
        if not resp.kvs:
            raise InnerError(NO_LEADER)
        return electionpb.LeaderResponse(header=resp.header, kv=resp.kvs[0])

    async def Observe(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """The leader now and each change after: new values, new leaders, in order."""
        async with self.node.leader_gate.stream(context):
            client = self._client(context)
            try:
                async for resp in self._observe(client, request.name + b"/"):
                    yield resp
            except (InnerError, EtcdError):
                return  # etcd's Observe closes its channel: the stream ends, status OK

    async def _observe(self, client: Client, prefix: bytes) -> AsyncIterator[Any]:
        """clientv3/concurrency ``Election.observe``."""
        while True:
            got = await client.range(first_create(prefix))
            if got.kvs:
                header, kv = got.header, got.kvs[0]
            else:
                header, kv = await self._first_put(client, prefix, got.header.revision)
            yield electionpb.LeaderResponse(header=header, kv=kv)
            with client.watch(kv.key, b"", header.revision + 1) as events:
                deleted = False
                while not deleted:
                    at, batch = await events.next()
                    for event in batch:
                        if event.type == mvccpb.Event.DELETE:
                            deleted = True
                            break
                        yield electionpb.LeaderResponse(header=at, kv=event.kv)

    @staticmethod
    async def _first_put(
        client: Client, prefix: bytes, revision: int
    ) -> tuple[rpcpb.ResponseHeader, Any]:
        """No leader: the first key put under ``prefix`` from ``revision`` on (its
        header's revision is that put's)."""
        with client.watch(prefix, prefix_end(prefix), revision) as events:
            while True:
                header, batch = await events.next()
                for event in batch:
                    if event.type == mvccpb.Event.PUT:
                        header.revision = event.kv.mod_revision
                        return header, event.kv
