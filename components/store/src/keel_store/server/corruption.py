"""Comparing the members' key spaces: etcd's corruption checks.

Every member applies the same log, so at one revision every member's key space hash
(Maintenance.HashKV) is the same, unless one of them was silently damaged (a disk
that returned other bytes, a bug). etcd 3.4 checks this two ways, and so does
keel-store; the hashes travel over the peer transport (``CALL_HASHKV``).

- ``--experimental-initial-corrupt-check``: before serving clients a member compares
  its hash with every peer's at its own revision and refuses to start when one with
  the same compact revision differs ("found data inconsistency with peers"). Peers
  that are behind, compacted past it or unreachable are logged and skipped.
- ``--experimental-corrupt-check-time``: every interval the leader compares its hash
  with the peers'; a member whose hash differs at the same compact revision, or that
  claims a revision or compact revision beyond the leader's, raises the CORRUPT alarm
  through the log (naming that member, as etcd 3.5 does; etcd 3.4 names member 0).
  With CORRUPT raised every member refuses writes ("etcdserver: corrupt cluster")
  until ``etcdctl alarm disarm``; reads are served.

The hash covers the whole key space (0.4-0.5 s per 100k keys here); over a large one
the daemon computes it in a forked child (``StoreNode.hash_kv_async``), so the loop
does not wait. Both checks are off unless asked for, as in etcd.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from keel_store.mvcc import errors
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.errors import EtcdError
from keel_store.pb import rpcpb

if TYPE_CHECKING:
    from keel_store.server.node import StoreNode

log = logging.getLogger("keel_store.corruption")


class CorruptionError(RuntimeError):
    """The initial check found a peer whose key space differs from this member's."""


Answer = tuple[int, int, int] | EtcdError
"""A peer's (hash, current revision, compact revision), or why it gave none."""


async def _peer_hashes(node: StoreNode, revision: int) -> dict[int, Answer]:
    peers = sorted(m for m in node.sm.members if m != node.member_id)

    async def ask(peer: int) -> Answer:
        # A call is not resent by the transport: one written to a connection that died
        # (the peer restarted, or this member did and the peer's old connection to it
        # is not closed yet) is lost. Ask again, waiting longer each time (a peer with
        # a large key space takes a while to hash it), within the request timeout.
        deadline = asyncio.get_running_loop().time() + node.config.request_timeout
        wait = 0.5
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                return await node.peer_hash_kv(peer, revision, min(wait, max(left, 0.01)))
            except EtcdError as exc:
                if exc is not errors.TIMEOUT or left <= wait:
                    return exc
            wait *= 2

    answers = await asyncio.gather(*(ask(p) for p in peers))
    return dict(zip(peers, answers, strict=True))


async def initial_check(node: StoreNode) -> None:
    """Raise :class:`CorruptionError` if a peer's hash differs at this member's
    revision and compact revision."""
    value, revision, compact = await node.hash_kv_async()
    here = {"local-member-revision": revision, "local-member-compact-revision": compact}
    log.info("starting initial corruption check", extra=here)
    mismatches = 0
    for peer, answer in (await _peer_hashes(node, revision)).items():
        fields = {**here, "remote-peer-id": f"{peer:x}"}
        if isinstance(answer, EtcdError):
            if answer is errors.FUTURE_REV:
                log.warning("cannot fetch hash from slow remote peer", extra=fields)
            elif answer is errors.COMPACTED:
                log.warning(
                    "cannot fetch hash from remote peer; local member is behind", extra=fields
                )
            else:
                log.warning("failed hash kv request", extra={**fields, "error": str(answer)})
            continue
        peer_hash, _, peer_compact = answer
        if peer_hash == value:
            continue
        fields |= {
            "local-member-hash": value,
            "remote-peer-hash": peer_hash,
            "remote-peer-compact-revision": peer_compact,
        }
        if peer_compact == compact:
            log.warning("found different hash values from remote peer", extra=fields)
            mismatches += 1
        else:
            log.warning("found different compact revision values from remote peer", extra=fields)
    if mismatches:
        raise CorruptionError(f"{node.member_id:x} found data inconsistency with peers")
    log.info("initial corruption checking passed; no corruption")


async def check(node: StoreNode) -> int | None:
    """One pass on the leader; the member the CORRUPT alarm was raised for, if any."""
    value, revision, compact = await node.hash_kv_async()
    answers = await _peer_hashes(node, revision)
    await node.read_barrier()  # everything committed before the answers is applied
    value2, revision2, compact2 = await node.hash_kv_async()
    if value2 != value and revision2 == revision and compact2 == compact:
        log.warning("found hash mismatch", extra={"revision": revision, "hash-1": value,
                                                   "hash-2": value2})  # fmt: skip
        return await _alarm(node, node.member_id)
    checked = 0
    for peer, answer in answers.items():
        if isinstance(answer, EtcdError):
            continue
        checked += 1
        peer_hash, peer_revision, peer_compact = answer
        fields = {"follower-peer-id": f"{peer:x}", "leader-revision": revision2}
        if peer_revision > revision2:
            log.warning(
                "revision from follower must be less than or equal to leader's",
                extra={**fields, "follower-revision": peer_revision},
            )
            return await _alarm(node, peer)
        if peer_compact > compact2:
            log.warning(
                "compact revision from follower must be less than or equal to leader's",
                extra={**fields, "follower-compact-revision": peer_compact},
            )
            return await _alarm(node, peer)
        if peer_compact == compact and peer_hash != value:
            log.warning(
                "same compact revision then hashes must match",
                extra={**fields, "leader-hash": value, "follower-hash": peer_hash},
            )
            return await _alarm(node, peer)
    log.info("finished peer corruption check", extra={"number-of-peers-checked": checked})
    return None


async def _alarm(node: StoreNode, member: int) -> int:
    request = rpcpb.AlarmRequest(
        action=rpcpb.AlarmRequest.ACTIVATE, memberID=member, alarm=rpcpb.CORRUPT
    )
    await node.propose(Kind.ALARM, request)
    log.error("raised the CORRUPT alarm", extra={"member-id": f"{member:x}"})
    return member


async def monitor(node: StoreNode, interval: float) -> None:
    """Check every ``interval`` seconds while this member leads (runs until cancelled)."""
    log.info("enabled corruption checking", extra={"interval": interval})
    while True:
        await asyncio.sleep(interval)
        if not node.is_leader:
            continue
        try:
            await check(node)
        except EtcdError as exc:  # a lost leadership, a timeout: the next pass retries
            log.warning("failed to check hash KV", extra={"error": str(exc)})
