"""etcd's Lock service (v3lock: ``/v3lockpb.Lock/Lock``, ``/Unlock``), as etcd 3.4 serves
it with clientv3/concurrency's Mutex (see :mod:`keel_store.server.concurrency`).

Lock puts ``<name>/<lease-hex>`` with the lease (a new 60 s lease when the request
names none, left to expire) unless that key exists already (the same lease locking
again gets it back), then waits until every key under ``<name>/`` created before it
is deleted; the answer is the key and the header of the last read. A Lock whose client
goes away (or whose deadline passes) while waiting deletes its key. Unlock deletes the
key it is given. Errors of the KV calls underneath come back as code Unknown with
their message, as from etcd.
"""

from __future__ import annotations

import asyncio
from typing import Any

from keel_store.mvcc.errors import EtcdError
from keel_store.pb import lockgrpc, lockpb, rpcpb
from keel_store.server.concurrency import (
    CallerClients,
    InnerError,
    cleanup,
    first_create,
    served,
)


class LockService(CallerClients, lockgrpc.LockServicer):  # type: ignore[misc]
    """Lock and Unlock, on top of the KV and lease calls of the caller."""

    @served
    async def Lock(self, request: Any, context: Any) -> Any:
        """clientv3/concurrency ``Mutex.Lock`` with the request's lease."""
        client = self._client(context)
        lease, prefix, key = await client.own_key(request.name, request.lease)
        owner = rpcpb.RequestOp(request_range=first_create(prefix))
        mine = rpcpb.Compare(
            key=key, target=rpcpb.Compare.CREATE, result=rpcpb.Compare.EQUAL, create_revision=0
        )
        put = rpcpb.PutRequest(key=key, value=b"", lease=lease)
        txn = rpcpb.TxnRequest(
            compare=[mine],
            success=[rpcpb.RequestOp(request_put=put), owner],
            failure=[rpcpb.RequestOp(request_range=rpcpb.RangeRequest(key=key)), owner],
        )
        resp = await client.txn(txn)
        revision = resp.header.revision
        if not resp.succeeded:
            revision = resp.responses[0].response_range.kvs[0].create_revision
        holder = resp.responses[1].response_range.kvs
        header = resp.header
        if holder and holder[0].create_revision != revision:
            try:
                header = await client.wait_deletes(prefix, revision - 1)
            except (asyncio.CancelledError, InnerError, EtcdError):
                await cleanup(lambda: client.delete(key))  # etcd's m.Unlock
                raise
        return lockpb.LockResponse(header=header, key=key)

    @served
    async def Unlock(self, request: Any, context: Any) -> Any:
        """Delete the lock's key (whoever holds it)."""
        resp = await self._client(context).delete(request.key)
        return lockpb.UnlockResponse(header=resp.header)
