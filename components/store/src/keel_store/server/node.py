"""A store member: drives the Raft core with disk, clock and peers, applies to the MVCC.

One asyncio task owns the Raft core. Everything that touches the core (client
proposals, peer messages, ticks, reads) goes into an inbox; the loop drains the inbox
into the core, then handles one ``Ready``: append and fsync (requests that arrive
meanwhile share the next fsync: group commit; on the loop or in a thread, see
server/syncpolicy.py), send, apply, advance. Proposals made on a follower are
forwarded to the leader; the proposer still learns its result because every member
applies every entry and results are matched by request ID. Linearizable reads use
ReadIndex, batched: one round per loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import struct
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message as PbMessage

from keel_store.mvcc import commands, errors, snapshot
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.lessor import Lessor
from keel_store.mvcc.store import MemberRecord, StateMachine
from keel_store.mvcc.watch import WatchHub
from keel_store.raft import (
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDroppedError,
    RaftConfig,
    RaftNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from keel_store.server import snapshot_schedule, transport
from keel_store.server.calls import (
    _CALL,
    CALL_HASHKV,
    CALL_KEEPALIVE,
    CALL_LEARNER_READY,
    CALL_PROPOSE,
    CALL_READ_INDEX,
    CALL_TTL,
)
from keel_store.server.config import NodeConfig
from keel_store.server.heartbeat_watch import HeartbeatWatch
from keel_store.server.leader_gate import LeaderGate
from keel_store.server.membership import MembershipMixin, force_new_cluster
from keel_store.server.outbox import Outbox
from keel_store.server.reads import ReadIndexMixin
from keel_store.server.snapshotter import (
    ChildSnapshot,
    FileLoader,
    compute_in_child,
    write_in_child,
)
from keel_store.server.stats import ServerStats
from keel_store.server.syncpolicy import SyncPolicy
from keel_store.server.tokens import SimpleTokens, TokenProvider
from keel_store.wal import NodeStorage, OSFileSystem

log = logging.getLogger("keel_store.node")

_EARLY = frozenset({MessageType.APPEND, MessageType.HEARTBEAT})
"""Leader messages that may leave before the leader's own fsync."""

_CAMPAIGNING = frozenset({Role.PRE_CANDIDATE, Role.CANDIDATE})

_PROPOSAL_FAILURES = (
    errors.TIMEOUT,
    errors.PROPOSE_DEADLINE,
    errors.LEADER_CHANGED,
    errors.NO_LEADER,
    errors.STOPPED,
)
"""Proposals that end so count as failed (etcd's ``proposals_failed_total``)."""

_COMPACT_STEP = 5000
"""Entries of the in-memory log dropped per Ready after a snapshot (~10 ms here)."""

_RETRY_S = 5.0
"""After a failed background snapshot, wait this long before forking another."""


class StoreNode(ReadIndexMixin, MembershipMixin):
    """One member of the store."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.cluster = config.cluster
        self.member_id = self.cluster.id_of(config.name)
        self.disk: NodeStorage
        self.storage = MemoryStorage()
        self.sm = StateMachine()
        self.ops = self.sm.ops
        """Ranges/puts/deletes/txns seen here (kept across snapshot installs)."""
        self.stats = ServerStats()
        """Counters for ``/metrics`` (keel_store.server.metrics)."""
        self.hub = WatchHub(self.sm.kv)
        self.sm.kv.busy = self._keep_peers
        self._next_keepalive = 0.0
        self._heartbeat_watch = HeartbeatWatch(config.heartbeat_ms / 1000)
        self.sm.listeners.append(self.hub.notify)
        self.lessor = Lessor(config.lease_checkpoint_interval)
        self.raft: RaftNode
        self.transport = transport.PeerTransport(
            self.member_id, self.cluster.token, self._on_frame, cluster_id=self.cluster.cluster_id
        )
        self.transport.on_frames_done = self._on_frames_done
        self.outbox = Outbox(self.transport)
        self.outbox.on_snapshot_sent = lambda peer, index: self._submit(
            lambda: self.raft.snapshot_sent(peer, index)
        )
        self.sync_policy = SyncPolicy()
        """Whether the loop waits for a WAL fsync itself or hands it to a thread."""
        self._rng = random.Random(os.urandom(16))
        self._inbox: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._snapshot_child: ChildSnapshot | None = None
        self._snapshot_retry_at = 0.0
        self._snapshot_now = False
        """The snapshot file could not be read to send it: take a new one at once."""
        self._compact_to = 0
        """The in-memory log is dropped up to here, a step per Ready (_compact_some)."""
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._answers: dict[int, Callable[[Any], None]] = {}
        """Per request ID: who sends the client its answer the moment the entry applies."""
        self._reads: list[asyncio.Future[None]] = []
        self._read_rounds: dict[bytes, list[asyncio.Future[None]]] = {}
        self._remote_reads: dict[bytes, tuple[int, int]] = {}
        self._apply_waits: list[tuple[int, asyncio.Future[None]]] = []
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._revoking: set[int] = set()
        self._hash_tasks: set[asyncio.Task[None]] = set()
        """Answers to peers' CALL_HASHKV being computed (kept from collection)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._next_id = self._rng.getrandbits(40)
        self.last_snapshot_index = 0
        self.replayed = asyncio.Event()
        """Set once the entries committed before a start are applied again (at once
        on a fresh member), or the member stopped first: until then the member
        replays its WAL, which the daemon lets run without the cyclic collector."""
        self._replay_to = 0
        self._applied_bytes = 0
        """Bytes of entries this process applied (``--experimental-snapshot-bytes``)."""
        self._snapshot_mark = (0, 0, True)
        """At the last snapshot: ``_applied_bytes``, the key space's size, and whether
        it was the start (``snapshot_schedule.bytes_due``; the first gets a phase)."""
        self.leader_changed = asyncio.Event()
        self.leader_gate = LeaderGate(lambda: self.raft.leader, config.election_ms / 1000)
        """etcd's ``hasleader`` checks for calls made with clientv3's ``WithRequireLeader``."""
        self.tokens: TokenProvider = config.token_provider or SimpleTokens()
        """Issues auth tokens and maps them back to users (``--auth-token``)."""
        self.attributes: dict[int, tuple[str, list[str]]] = {}
        """Member ID -> (name, client URLs) as each member announced itself."""
        self._known_leader = 0
        self._role = Role.FOLLOWER
        """The role of the last soft state handled (:meth:`_new_soft_state`)."""
        self.alone: Callable[[], bool] = lambda: False
        """Whether the request being proposed is the only one in progress (the client
        server sets this); a lone proposal is handled at once, not on the next turn."""
        self._running = False
        """The inbox and Readys are being handled (by the loop task, maybe waiting for
        a WAL sync in a thread, or by :meth:`_kick` in a caller's stack)."""
        self._later: list[Message] = []
        """The current Ready's messages that leave after its WAL sync."""
        self.failure: Exception | None = None
        """What stopped the member's Raft processing, if anything did."""
        self.on_failure: Callable[[Exception], None] | None = None
        """Called once when a turn fails (the daemon stops the process then)."""
        self.removed = False
        """This member was removed from the cluster and stops (``MembershipMixin``)."""
        self.on_removed: Callable[[], None] | None = None
        """Called once when the member stops for being removed (the daemon exits 0 then,
        as etcd does)."""
        self._parked: list[tuple[bytes, asyncio.Future[Any]]] = []
        """Proposals that arrived while there was no leader: sent once one is known."""
        self.stopped = False

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from disk (or bootstrap), listen for peers, start the loops."""
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        # Part 1's WAL and snapshot files, laid out like etcd's (<data-dir>/member/...).
        # Segments are preallocated as etcd does (64 MiB): an fdatasync that need not
        # also grow the file is ~30 us cheaper here (81 vs 115 us, measured).
        wal_dir = self.config.wal_dir
        self.disk, recovered = NodeStorage.open(
            OSFileSystem(),
            str(self.config.data_dir / "member"),
            wal_dir=None if wal_dir is None else str(wal_dir),
            keep_snapshots=self.config.max_snapshots,
            max_wals=self.config.max_wals or None,
            preallocate=True,
        )
        snap = recovered.snapshot
        fresh = snap is None
        if snap is None:
            for m in self.cluster.members.values():
                self.sm.members[m.id] = MemberRecord(m.id, m.name, list(m.peer_urls), m.is_learner)
            voters = self.cluster.voter_ids()
            if self.config.join_existing:
                # We are added by a conf change in the log we are about to receive.
                voters = [v for v in voters if v != self.member_id]
            conf = ConfState(voters=tuple(sorted(voters)))
            snap = Snapshot(SnapshotMeta(index=0, term=0, conf=conf), snapshot.save(self.sm))
            self.disk.save_snapshot(snap)
        entries, hard_state = recovered.entries, recovered.hard_state
        if self.config.force_new_cluster and not fresh:  # a new member ignores it (etcd)
            from keel_store.pb import rpcpb  # noqa: PLC0415

            me = self.cluster.members[self.member_id]
            extra, hard_state = force_new_cluster(
                rpcpb.Member(ID=self.member_id, name=me.name, peerURLs=me.peer_urls),
                snap.meta,
                entries,
                hard_state,
            )
            self.disk.save(extra, hard_state)
            entries = [*entries, *extra]
            log.warning(
                "--force-new-cluster: committed the log up to index %d and removed every"
                " other member; this member is now a one-member cluster",
                hard_state.commit,
            )
        self.storage.apply_snapshot(snap)
        self._install_state(snap)
        self.storage.append(entries)
        self.storage.set_hard_state(hard_state)
        self._replay_to = hard_state.commit
        self._note_replayed()
        self.last_snapshot_index = snap.meta.index
        self._snapshot_mark = (0, self.sm.kv.size, True)
        election_ticks = max(2, self.config.election_ms // self.config.heartbeat_ms)
        self.raft = RaftNode(
            RaftConfig(
                id=self.member_id,
                election_ticks=election_ticks,
                heartbeat_ticks=1,
                applied=snap.meta.index,
                rng=random.Random(self._rng.getrandbits(64)),
                pre_vote=self.config.pre_vote,
            ),
            self.storage,
        )
        self.transport.server_ssl = self.config.peer_server_ssl
        self.transport.client_ssl = self.config.peer_client_ssl
        await self.transport.listen(
            self.config.listen_peer_url or self.cluster.self_peer_url(self.config.name)
        )
        me = self.cluster.members[self.member_id]
        self.attributes[self.member_id] = (me.name, list(me.client_urls))
        self.transport.hello_info = {"name": me.name, "client_urls": me.client_urls}
        self.transport.on_hello = self._on_hello
        self.transport.on_peer_lost = self._on_peer_lost
        self.transport.is_removed = lambda peer: peer in self.sm.removed
        self.transport.on_removed = lambda peer: self._on_removed(
            0.0, f"peer {peer:x} refused it as removed"
        )
        self.transport.members_info = self._members_info
        self._refresh_peers()
        self._tasks = [
            asyncio.create_task(self._run()),
            asyncio.create_task(self._ticker()),
            asyncio.create_task(self._advance_election_ticks()),
            asyncio.create_task(self.leader_gate.monitor()),
            asyncio.create_task(self.publish()),
        ]
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loops and the transport; fail everything still waiting."""
        self.stopped = True
        self.replayed.set()  # nothing more is replayed: no one waits for it
        if self._snapshot_child is not None:
            self._snapshot_child.kill()
        tasks = [*self._tasks, *self._hash_tasks]  # a hash child is killed on cancel
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.outbox.close()
        await self.transport.close()
        for fut in [*self._waiters.values(), *self._reads, *self._calls.values()]:
            if not fut.done():
                fut.set_exception(errors.STOPPED)
        self.disk.close()

    def _install_state(self, snap: Snapshot) -> None:
        self.sm = snapshot.restore(snap.data)
        self.sm.ops = self.ops
        self.sm.applied_index = snap.meta.index
        self.sm.listeners.append(self.hub.notify)
        self.sm.kv.busy = self._keep_peers
        self.hub.rebind(self.sm.kv)
        now = time.monotonic()
        self.lessor = Lessor(self.config.lease_checkpoint_interval)
        for lease in self.sm.leases.values():
            # At start or from a leader's snapshot: never as the leader (its first
            # checkpoints are scheduled when it is promoted).
            self.lessor.grant(lease.id, lease.ttl, now, leader=False)

    # --- facts for the API ---------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.raft.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        return self.raft.leader

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def applied_index(self) -> int:
        return self.sm.applied_index

    def disk_bytes(self) -> int:
        """Bytes of this member's snapshot files and WAL records (``endpoint status`` DB
        size). The last WAL segment counts up to its last record: the rest is zero fill
        preallocated to 64 MiB (etcd's figure is its bbolt file, and an empty member's
        is 20 kB; counting the fill made keel-store's 64 MiB)."""
        total = 0
        dirs = [self.config.data_dir / "member"]
        if self.config.wal_dir is not None:
            dirs.append(self.config.wal_dir)
        tail, used = self.disk.wal.tail
        for path in (p for d in dirs for p in d.rglob("*")):
            with contextlib.suppress(OSError):
                if path.is_file():
                    size = path.stat().st_size
                    total += min(size, used) if str(path) == tail else size
        return total

    @property
    def commit_index(self) -> int:
        return self.raft.log.committed

    @property
    def pending_proposals(self) -> int:
        """Proposals made here still waiting for their entry to apply."""
        return len(self._waiters)

    # --- the loop ---------------------------------------------------------------------------

    def _submit(self, action: Callable[[], None]) -> None:
        self._inbox.append(action)
        self._wake.set()

    async def _ticker(self) -> None:
        interval = self.config.heartbeat_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._submit(self._tick)

    async def _advance_election_ticks(self) -> None:
        """etcd's ``adjustTicks``: the first campaign after a start need not wait a whole
        election timeout (1 to 2 of them, randomized) when nobody else can lead.

        The only voter campaigns at once, whatever the flag (etcd skips ``election
        ticks - 1`` of a randomized timeout of 1 to 2 election timeouts, so its lone
        member still waits up to one: 0.1-1 s here, for no vote to gather). With
        ``--initial-election-tick-advance`` (the default), a member of a larger cluster
        fast-forwards ``election ticks - 2`` once enough peers are connected for a vote
        to pass (etcd waits up to 5 s the same way, for two connected peers): a leader
        that is up sends its heartbeat within the two ticks left, and a live leader
        loses nothing to a refused pre-vote. With ``--initial-election-tick-advance=false``
        it waits the full timeout. The configuration is read on every check: the
        recovered log may change it.
        """
        deadline = time.monotonic() + 5.0
        ticks = self.raft.config.election_ticks
        while time.monotonic() < deadline:
            voters = self.raft.conf.voters
            if voters == (self.member_id,) and self.raft.log.applied >= self.raft.log.committed:
                self._submit(self._campaign_alone)
                return
            if self.config.initial_election_tick_advance and self.member_id in voters:
                active = sum(
                    1
                    for v in voters
                    if v != self.member_id and self.transport.active_since(v) is not None
                )
                if len(voters) > 1 and active + 1 > len(voters) // 2:
                    self._submit(lambda: self._fast_forward(ticks - 2))
                    return
            await asyncio.sleep(0.05)

    def _campaign_alone(self) -> None:
        if self.raft.role is Role.FOLLOWER and not self.raft.leader:
            self.raft.campaign()

    def _fast_forward(self, ticks: int) -> None:
        for _ in range(ticks):
            if self.raft.role is not Role.FOLLOWER or self.raft.leader:
                return  # a leader is known (or we lead): nothing to hurry
            self.raft.tick()

    def _tick(self) -> None:
        self.raft.tick()
        if self.is_leader:
            self._reconcile_membership()
            now = time.monotonic()
            for lease_id in self.lessor.expired(now):
                if lease_id not in self._revoking and lease_id in self.sm.leases:
                    self._revoking.add(lease_id)
                    self.stats.leases_expired += 1
                    req = commands.encode(Kind.LEASE_REVOKE, 0, _lease_revoke(lease_id))
                    with contextlib.suppress(ProposalDroppedError):
                        self.raft.propose(req)
            due = self.lessor.due_checkpoints(now)
            if due:
                self._propose_checkpoints(due, now)

    def _propose_checkpoints(self, due: list[tuple[int, int]], now: float) -> None:
        """The leader's clock of long leases into the log (etcd's lease checkpoints); a
        dropped proposal is tried again an interval later."""
        if not self._propose_lease_checkpoint(due):
            for lease_id, _ in due:
                self.lessor.reschedule(lease_id, now)

    def _propose_lease_checkpoint(self, remaining: list[tuple[int, int]]) -> bool:
        """Propose (lease ID, seconds left) pairs (0 clears); False if dropped."""
        try:
            self.raft.propose(
                commands.encode(Kind.LEASE_CHECKPOINT, 0, _lease_checkpoint(remaining))
            )
        except ProposalDroppedError:
            return False
        return True

    def _renew(self, lease_id: int) -> int | None:
        """A keep-alive on the leader; a checkpointed remaining TTL is cleared on every
        member (through the log), else a later leader would cut the renewed lease short."""
        now = time.monotonic()
        if self.lessor.checkpointed(lease_id):
            self._propose_lease_checkpoint([(lease_id, 0)])
        ttl = self.lessor.renew(lease_id, now)
        if ttl:
            self.stats.leases_renewed += 1
        return ttl

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self.failure is not None:
                return
            self._running = True
            try:
                rd = self._turn(threaded=True)
                while rd is not None:
                    # A slow disk: the sync runs in a thread, so reads and watches are
                    # served meanwhile. Timed there, recorded here.
                    self._synced(await loop.run_in_executor(None, self._timed_sync))
                    self._settle(rd)
                    rd = self._turn(threaded=True)
            except Exception as exc:
                self._fail_stop(exc)
                return
            finally:
                self._running = False

    def _kick(self, *, now: bool) -> None:
        """Have the inbox handled: with ``now``, at once in the caller's stack if the loop
        task is idle, the member neither stopping nor failed and the disk fast (one turn
        of the event loop and a task switch less on the way of a lone request); else on
        the loop task's next turn."""
        if (
            now
            and not self._running
            and not self.stopped
            and self.failure is None
            and self.sync_policy.inline()
        ):
            self._running = True
            try:
                self._turn(threaded=False)
            except Exception as exc:
                self._fail_stop(exc)
            finally:
                self._running = False
        else:
            self._wake.set()

    def _fail_stop(self, exc: Exception) -> None:
        """A turn failed (a WAL that can no longer write or sync, or a bug): half a
        Ready was handled, so no further one is taken, as etcd exits on a failed WAL
        save. ``on_failure`` tells the daemon, which stops the member."""
        log.critical("the member stops: %s: %s", type(exc).__name__, exc, exc_info=exc)
        self.failure = exc
        self.replayed.set()
        self._wake.set()  # the loop task, if it is waiting, ends
        if self.on_failure is not None:
            self.on_failure(exc)

    def _turn(self, *, threaded: bool) -> Ready | None:
        """Take the inbox, then handle Readys until Raft has nothing more. Returns a
        Ready (persisted, not yet synced) whose WAL sync should go to a thread, if
        ``threaded`` and the disk is slow; the caller syncs it and calls :meth:`_settle`
        and this again."""
        self._wake.clear()
        inbox, self._inbox = self._inbox, []
        for action in inbox:
            try:
                action()
            except ProposalDroppedError as exc:
                log.debug("dropped: %s", exc)
        self._start_read_round()
        while self.raft.has_ready():
            rd = self.raft.ready()
            if self._persist(rd):
                if threaded and not self.sync_policy.inline():
                    return rd
                # A fast disk: waiting for it here costs less than the hand-off to a
                # thread and back (server/syncpolicy.py has the numbers).
                self._synced(self._timed_sync())
            self._settle(rd)
        self._release_apply_waits()
        return None

    def _persist(self, rd: Ready) -> bool:
        """The first half of a Ready: leader state, snapshot, early messages, entries
        and hard state to the WAL. Whether they need a sync before the rest."""
        if rd.soft_state is not None:
            self._new_soft_state(rd.soft_state)
        if rd.snapshot is not None:
            started = time.perf_counter()
            self.storage.apply_snapshot(rd.snapshot)
            self._install_state(rd.snapshot)
            self._refresh_peers()
            self.disk.save_snapshot(rd.snapshot)
            self.last_snapshot_index = rd.snapshot.meta.index
            self._snapshot_mark = (self._applied_bytes, self.sm.kv.size, False)
            log.info(
                "installed the leader's snapshot at index %d (%d bytes) in %.2f s",
                rd.snapshot.meta.index,
                len(rd.snapshot.data),
                time.perf_counter() - started,
            )
        self._later = rd.messages
        if self.raft.role is Role.LEADER:
            # A leader may replicate before its own fsync (Raft thesis 10.2.1, as
            # etcd does): followers' fsyncs overlap ours. Commit still needs a
            # quorum of persisted copies, and we apply only after our fsync. Sent
            # first thing, before the WAL encodes the entries.
            early = [m for m in rd.messages if m.type in _EARLY]
            self._later = [m for m in rd.messages if m.type not in _EARLY]
            for m in early:
                self._send(m)
        # Like etcd's MustSync: a moved commit index alone needs no fsync (it is
        # recomputed after a crash); new entries, a new term or a vote do.
        prev = self.storage.hard_state
        must_sync = (
            bool(rd.entries)
            or rd.snapshot is not None
            or (
                rd.hard_state is not None
                and (rd.hard_state.term, rd.hard_state.vote) != (prev.term, prev.vote)
            )
        )
        self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        self.disk.append(rd.entries, rd.hard_state)
        return must_sync and self.config.fsync

    def _synced(self, took: float) -> None:
        self.sync_policy.observe(took)
        self.stats.wal_fsync.observe(took)

    def _settle(self, rd: Ready) -> None:
        """The second half of a Ready, once it is durable: the other messages, applying
        what committed, advancing Raft."""
        for m in self._later:
            self._send(m)
        self._later = []
        if self.outbox.holding and any(
            commands.may_take_long(e.data) for e in rd.committed_entries if e.type == 0
        ):
            # This loop is about to be busy for a while (a 400k-key delete: ~2
            # s) and takes no Ready meanwhile: followers learn the commit index
            # first and apply alongside, instead of waiting, timing out and
            # electing a new leader (heartbeats from inside the apply,
            # _keep_peers, cover only ranged deletes and their watchers).
            self.outbox.flush()
        clock, warn = time.perf_counter, self.config.warn_apply_seconds
        for entry in rd.committed_entries:
            started = clock()
            self._applied_bytes += len(entry.data)
            self._apply(entry.index, entry.data if entry.type == 0 else b"")
            took = clock() - started
            if took > warn:
                self._slow_apply(entry.index, entry.data, took)
        self.raft.advance(rd)
        self._note_replayed()
        for rs in rd.read_states:
            self._read_ready(rs)
        self._maybe_snapshot()
        if self._compact_to >= self.storage.first_index():
            self._compact_some()

    def _note_replayed(self) -> None:
        if not self.replayed.is_set() and self.sm.applied_index >= self._replay_to:
            self.replayed.set()

    def _slow_apply(self, index: int, data: bytes, took: float) -> None:
        """etcd's "apply request took too long" (``--experimental-warning-apply-duration``)."""
        try:
            request = commands.Kind(data[0]).name.lower() if data else "raft entry"
        except ValueError:
            request = "unknown command"
        log.warning(
            "apply request took too long",
            extra={
                "took": f"{took * 1000:.1f}ms",
                "expected-duration": f"{self.config.warn_apply_seconds * 1000:.1f}ms",
                "index": index,
                "request": request,
                "request-bytes": len(data),
            },
        )

    def _new_soft_state(self, soft: SoftState) -> None:
        if soft.role is not self._role:
            if soft.role in _CAMPAIGNING:
                # etcd's "is starting a new election": which member went first, and when.
                log.info("term %d: this member campaigns, as %s", self.raft.term, soft.role.value)
            elif soft.role is Role.LEADER:
                self._heartbeat_watch.reset()
                self.lessor.promote(time.monotonic())
                self._revoking.clear()
            self._role = soft.role
        if soft.leader != self._known_leader:
            log.info(
                "term %d: leader %x (was %x), this member is %s",
                self.raft.term,
                soft.leader,
                self._known_leader,
                soft.role.value,
            )
            # Only what went to a previous leader can be lost; requests that
            # waited for a first leader are proposed to the new one.
            if self._known_leader != 0:
                self._fail_in_flight()
            if soft.leader != 0:
                self.stats.leader_changes += 1
            self._known_leader = soft.leader
            self.leader_gate.leader_seen(soft.leader)
            if self._known_leader != 0 and (self._parked or self._reads):
                self._submit(self._unpark)
        self.leader_changed.set()
        self.leader_changed = asyncio.Event()

    def _keep_peers(self) -> None:
        """Called from inside one long apply (a ranged delete, its watch delivery),
        every heartbeat interval: a leader sends its heartbeats on time, as its ticks
        would, so that its followers do not take the busy loop for a dead leader; a
        follower tells its leader it is alive (``alive_notices``), as its answers to
        the heartbeats it cannot read yet would, so that the leader's check-quorum
        does not step down while both followers still apply an entry it has finished.
        Nothing else of the Raft core runs (no tick, no Ready): its state does not
        change under the apply."""
        now = time.monotonic()
        if now < self._next_keepalive:
            return
        self._next_keepalive = now + self.config.heartbeat_ms / 1000
        for m in self.raft.heartbeats() or self.raft.alive_notices():
            self._send(m)

    def _send(self, m: Message) -> None:
        if m.type is MessageType.HEARTBEAT:
            late = self._heartbeat_watch.observe(m.to, time.monotonic())
            if late > 0.0:
                self._late_heartbeat(m.to, late)
        self.outbox.send(m)

    def _late_heartbeat(self, to: int, late: float) -> None:
        """etcd's warning for a heartbeat that left more than two intervals after the
        previous one to the same follower (see :mod:`keel_store.server.heartbeat_watch`)."""
        self.stats.heartbeat_send_failures += 1
        log.warning(
            "leader failed to send out heartbeat on time; took too long, leader is"
            " overloaded likely from slow disk",
            extra={
                "to": f"{to:x}",
                "heartbeat-interval": f"{self.config.heartbeat_ms:.0f}ms",
                "expected-duration": f"{2 * self.config.heartbeat_ms:.0f}ms",
                "exceeded-duration": f"{late * 1000:.1f}ms",
            },
        )

    def _timed_sync(self) -> float:
        started = time.perf_counter()
        self.disk.sync()
        return time.perf_counter() - started

    def _fail_in_flight(self) -> None:
        """The leader changed: what was sent to the old one may be lost.

        Pending writes fail with etcd's "leader changed" (their outcome is unknown, as
        with etcd; clients retry). Reads are safe to repeat, so their rounds restart.
        """
        for request_id, fut in list(self._waiters.items()):
            if not fut.done():
                fut.set_exception(errors.LEADER_CHANGED)
            self._waiters.pop(request_id, None)
        for call_id, call in list(self._calls.items()):
            if not call.done():
                call.set_exception(errors.LEADER_CHANGED)
            self._calls.pop(call_id, None)
        for ctx in list(self._read_rounds):
            self._reads.extend(self._read_rounds.pop(ctx))
        self._remote_reads.clear()
        if self._reads:
            self._wake.set()

    def _apply(self, index: int, data: bytes) -> None:
        # The entry's watchers hear of it once its request is answered, as etcd's
        # apply only hands events to the watch streams, whose goroutines build and
        # send the responses. The revision is still the current one then: headers and
        # ordering are as if delivered inside the apply.
        self.hub.hold()
        try:
            self._apply_entry(index, data)
        finally:
            self.hub.release()

    def _apply_entry(self, index: int, data: bytes) -> None:
        try:
            request_id, result = commands.apply(self.sm, index, data)
        except ValueError as exc:  # a corrupt command: skip it on every member alike
            log.error("entry %d: %s", index, exc)
            self.sm.applied_index = index
            return
        if isinstance(result, PbMessage):
            kind = data[0] if data else 0
            now = time.monotonic()
            if kind in (Kind.MEMBER_ADD, Kind.MEMBER_REMOVE, Kind.MEMBER_UPDATE):
                self._refresh_peers()
            if kind == Kind.MEMBER_REMOVE:
                gone = commands.decode(data)[2].ID
                if gone == self.member_id:
                    # etcd stops a second later (stopWithDelay): the leader's commit
                    # reaches the others meanwhile.
                    self._on_removed(1.0, f"entry {index} removed it")
                else:
                    self.transport.refuse(gone)
            if kind == Kind.LEASE_GRANT:
                self.lessor.grant(result.ID, result.TTL, now, self.is_leader)
                self.stats.leases_granted += 1
            elif kind == Kind.LEASE_REVOKE:
                self.stats.leases_revoked += 1
                lease_id = commands.decode(data)[2].ID
                self.lessor.forget(lease_id)
                self._revoking.discard(lease_id)
            elif kind in (Kind.USER_DELETE, Kind.USER_CHANGE_PASSWORD):
                self.tokens.invalidate_user(commands.decode(data)[2].name)
            elif kind == Kind.LEASE_CHECKPOINT:
                for cp in result.checkpoints:
                    self.lessor.checkpoint(cp.ID, cp.remaining_TTL, now, self.is_leader)
        fut = self._waiters.pop(request_id, None)
        if fut is not None and not fut.done():
            if isinstance(result, EtcdError):
                fut.set_exception(result)
                return
            answer = self._answers.pop(request_id, None)
            if answer is not None:
                try:
                    answer(result)
                except Exception:  # the client's answer, not the member, failed
                    log.exception("answering request %x", request_id)
            fut.set_result(result)

    def _maybe_snapshot(self) -> None:
        applied = self.sm.applied_index
        count = self.config.snapshot_count
        voters = self.raft.conf.voters
        offset = snapshot_schedule.phase(self.member_id, voters, count)
        limit = self.config.snapshot_bytes
        at_bytes, base, first = self._snapshot_mark
        early = snapshot_schedule.phase(self.member_id, voters, limit) if first else 0
        since = self._applied_bytes - at_bytes
        by_count = snapshot_schedule.due(applied, self.last_snapshot_index, count, offset)
        by_bytes = not by_count and snapshot_schedule.bytes_due(since, base, limit, early)
        if not (by_count or by_bytes or self._snapshot_now):
            return
        if self.config.background_snapshots:
            if self._snapshot_child is not None:
                return  # one at a time; the next Ready asks again once it is recorded
            if time.monotonic() < self._snapshot_retry_at:
                return  # the last child failed (a full disk?): not a fork per Ready
        # Logged once the snapshot is saved, with the mark the next one counts from.
        if by_count:
            why = f"{applied - self.last_snapshot_index} entries since the last one"
        elif by_bytes:
            why = f"{since} bytes of entries since the last one"
        else:
            why = "the last one cannot be read"
        mark = (self._applied_bytes, self.sm.kv.size, False)
        started = time.perf_counter()
        if not self.config.background_snapshots:
            data = snapshot.save(self.sm)
            self._record_snapshot(applied, self.raft.conf, data, started, mark=mark, why=why)
            return
        conf = self.raft.conf
        meta = SnapshotMeta(index=applied, term=self.storage.term(applied), conf=conf)
        snapshots = self.disk.snapshots
        running = write_in_child(self.sm, lambda chunks: snapshots.write_tmp_chunks(meta, chunks))
        self._snapshot_child = running
        child = running.future
        replacing, self._snapshot_now = self._snapshot_now, False

        def record() -> None:
            # In the node loop, between two Readys: never while a WAL sync is in its
            # thread (saving the snapshot appends a record to the WAL and syncs it).
            self._snapshot_child = None
            if self.stopped or child.cancelled():
                return
            try:
                child.result()  # SnapshotChildError if the child failed
                # (unless a newer snapshot came from the leader meanwhile)
                if applied > self.storage.snapshot_meta.index:
                    self._record_written_snapshot(meta, started, mark=mark, why=why)
                elif replacing and applied == self.storage.snapshot_meta.index:
                    # Nothing applied since the unreadable one: the same snapshot,
                    # written again under its name (the loader reads the new file).
                    snapshots.commit_tmp(meta)
                    log.warning("wrote the snapshot at index %d again", applied)
            except Exception:  # the member goes on without it (a full disk?)
                log.exception("snapshot at %d failed, next try in %.0f s", applied, _RETRY_S)
                self._snapshot_retry_at = time.monotonic() + _RETRY_S

        child.add_done_callback(lambda _: self._submit(record))

    def _record_snapshot(
        self,
        applied: int,
        conf: ConfState,
        data: bytes,
        started: float,
        *,
        mark: tuple[int, int, bool],
        why: str,
    ) -> None:
        snap = self.storage.create_snapshot(applied, conf, data)
        self.disk.save_snapshot(snap)
        self._snapshot_recorded(applied, started, mark=mark, why=why)

    def _record_written_snapshot(
        self, meta: SnapshotMeta, started: float, *, mark: tuple[int, int, bool], why: str
    ) -> None:
        # A child wrote the file as it serialized (snapshotter.write_in_child): the
        # leader reads it back only to send a follower that fell behind the log, as
        # etcd sends its backend file. Named and recorded first: if that fails, the
        # member keeps its previous snapshot, whose file is still there.
        snapshots = self.disk.snapshots
        self.disk.save_snapshot(Snapshot(meta=meta), written=True)
        load = FileLoader(  # read in a thread when sent
            lambda: snapshots.read(meta).data,
            on_failure=lambda exc: self._snapshot_unreadable(meta, exc),
        )
        self.storage.create_snapshot(meta.index, meta.conf, b"", load=load)
        self._snapshot_recorded(meta.index, started, mark=mark, why=why)

    def _snapshot_unreadable(self, meta: SnapshotMeta, exc: Exception) -> None:
        """The snapshot file a follower needs could not be read (damaged on disk, or
        gone). The state machine in memory is intact: the damaged file is set aside
        (``.broken``) and a new snapshot is taken at once, which the follower gets on
        the leader's next try, instead of the member stopping (it did) or sending the
        damaged one again and again."""
        if self._snapshot_now or self.stopped:
            return
        log.error(
            "the snapshot file at index %d cannot be read (%s); taking a new snapshot",
            meta.index,
            exc,
        )
        with contextlib.suppress(OSError):
            self.disk.snapshots.set_aside(meta)
        self._snapshot_now = True
        self._snapshot_retry_at = 0.0
        self._submit(self._maybe_snapshot)

    def _snapshot_recorded(
        self, applied: int, started: float, *, mark: tuple[int, int, bool], why: str
    ) -> None:
        """A snapshot at ``applied`` is saved: ``mark`` is ``_snapshot_mark`` as of it,
        ``why`` is logged (etcd logs "saved snapshot" at info too)."""
        took = time.perf_counter() - started
        self.stats.snapshot_save.observe(took)
        self._snapshot_mark = mark
        log.info("saved snapshot at index %d (%s) in %.2f s", applied, why, took)
        # Keep some log behind the snapshot (etcd: 5000 entries) so slightly lagging
        # followers catch up from the log rather than a snapshot.
        retain = min(5000, self.config.snapshot_count)
        self._compact_to = max(self._compact_to, self.last_snapshot_index, applied - retain)
        self._compact_some()
        self.last_snapshot_index = applied

    def _compact_some(self) -> None:
        """Drop the next ``_COMPACT_STEP`` entries the last snapshot covers.

        All ~95k at once held the loop for 164-190 ms under ``etcdctl check perf
        --load=l`` (each freed entry writes to its page, and after the snapshot's fork
        every page takes a copy-on-write fault first); a step per Ready spreads it.
        """
        step_to = min(self._compact_to, self.storage.first_index() - 1 + _COMPACT_STEP)
        if step_to >= self.storage.first_index():
            self.storage.compact(step_to)

    # --- proposals ------------------------------------------------------------------------------

    def _new_request_id(self) -> int:
        self._next_id += 1
        return ((self.member_id & 0xFFFFFF) << 40) | (self._next_id & ((1 << 40) - 1))

    async def propose(
        self, kind: Kind, request: PbMessage, answer: Callable[[Any], None] | None = None
    ) -> Any:
        """Replicate ``request`` and return the state machine's response (or raise).

        ``answer``, if given, is called with a successful response inside the apply of
        its entry, as etcd's waiter triggers its goroutine there: the client's answer
        leaves at once instead of after the rest of the Ready was applied and this
        coroutine's task resumed (one or two turns of the loop later)."""
        request_id = self._new_request_id()
        data = commands.encode(kind, request_id, request)
        if len(data) > self.config.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE  # etcd checks the raft request it would propose
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiters[request_id] = fut
        if answer is not None:
            self._answers[request_id] = answer
        self._inbox.append(lambda: self._propose_or_forward(data, fut))
        # The only request in progress: nothing would join its Ready on the loop's next
        # turn, so handle it now (with 64 clients, each turn's requests share one).
        self._kick(now=self.alone())
        # Not asyncio.wait_for: its extra future costs the handler one more loop turn
        # after the apply resolves ``fut`` (measured ~10 us per put). No timer for a
        # proposal answered at once.
        timer = (
            None
            if fut.done()
            else loop.call_later(self.config.request_timeout, self._time_out, fut)
        )
        try:
            return await fut
        except EtcdError as exc:
            if exc in _PROPOSAL_FAILURES:  # not an error the state machine answered
                self.stats.proposals_failed += 1
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.pop(request_id, None)
            if answer is not None:
                self._answers.pop(request_id, None)

    def _propose_or_forward(self, data: bytes, fut: asyncio.Future[Any]) -> None:
        if self.is_leader:
            try:
                self.raft.propose(data)
            except ProposalDroppedError:
                if not fut.done():
                    fut.set_exception(errors.NO_LEADER)
            return
        leader = self.raft.leader
        if leader == 0:
            # No leader (yet, or it was just lost): wait for one, until the request
            # times out. The loop unparks these as soon as a leader is known.
            if len(self._parked) >= 1024:
                self._parked = [(d, f) for d, f in self._parked if not f.done()]
            self._parked.append((data, fut))
            return
        self.transport.send(leader, transport.CALL, _CALL.pack(0, CALL_PROPOSE) + data)

    def _time_out(self, fut: asyncio.Future[Any]) -> None:
        """A proposal's time is up: ``request timed out`` once it reached a leader; one
        still parked (no leader all along) fails as etcd's, whose raft Propose blocks
        without a leader until the request's context ends."""
        if fut.done():
            return
        parked = any(f is fut for _, f in self._parked)
        fut.set_exception(errors.PROPOSE_DEADLINE if parked else errors.TIMEOUT)

    def _unpark(self) -> None:
        parked, self._parked = self._parked, []
        for data, fut in parked:
            if not fut.done():
                self._propose_or_forward(data, fut)

    def _on_peer_lost(self, peer: int) -> None:
        """The peer transport saw the last connection from ``peer`` close.

        When ``peer`` is our leader, its process has most likely died (a live leader
        reconnects at once): the core forgets it and campaigns early (see
        ``RaftNode.report_leader_unreachable``), and writes forwarded to it fail with
        "leader changed" now rather than at their deadline.
        """

        def report() -> None:
            if self.raft.leader == peer and not self.is_leader:
                log.info("lost the connection from leader %x", peer)
            self.raft.report_leader_unreachable(peer)

        self._submit(report)

    # --- leases through the leader --------------------------------------------------------------

    async def _leader_call(self, kind: int, payload: bytes) -> bytes:
        leader = self.raft.leader
        if leader == 0:
            raise errors.NO_LEADER
        return await self._call(leader, kind, payload)

    async def _call(
        self, to: int, kind: int, payload: bytes, timeout: float | None = None
    ) -> bytes:
        """Ask member ``to`` over the peer transport; its reply's bytes (or TIMEOUT
        after ``timeout``, default the request timeout)."""
        self._next_id += 1
        call_id = self._next_id
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        self.transport.send(to, transport.CALL, _CALL.pack(call_id, kind) + payload)
        try:
            return await asyncio.wait_for(fut, timeout or self.config.request_timeout)
        except TimeoutError:
            raise errors.TIMEOUT from None
        finally:
            self._calls.pop(call_id, None)

    def hash_kv(self, revision: int = 0) -> tuple[int, int, int]:
        """(hash, revision, compact revision) of this member's key space at ``revision``
        (0: the current one), as Maintenance.HashKV computes it, on the loop; raises
        COMPACTED or FUTURE_REV."""
        at, compact = self._hash_target(revision)
        return snapshot.hash_kv(self.sm, at), at, compact

    def _hash_target(self, revision: int) -> tuple[int, int]:
        """(revision to hash, compact revision); COMPACTED or FUTURE_REV as HashKV."""
        kv = self.sm.kv
        if 0 < revision <= kv.compact_revision:
            raise errors.COMPACTED  # etcd: the compact revision itself cannot be hashed
        return kv.check_revision(revision), kv.compact_revision

    async def hash_kv_async(self, revision: int = 0) -> tuple[int, int, int]:
        """:meth:`hash_kv` without holding the loop: over a large key space (0.4-0.5 s
        per 100k keys here) it is computed in a forked child, from the state as it is
        now, as snapshots are (daemon only: ``background_snapshots``)."""
        if not self.config.background_snapshots or self.sm.kv.key_count < HASH_INLINE_KEYS:
            return self.hash_kv(revision)
        at, compact = self._hash_target(revision)
        child = compute_in_child(self.sm, lambda sm: struct.pack(">I", snapshot.hash_kv(sm, at)))
        try:
            (value,) = struct.unpack(">I", await child.future)
        finally:
            child.kill()
        return value, at, compact

    async def peer_hash_kv(
        self, peer: int, revision: int, timeout: float | None = None
    ) -> tuple[int, int, int]:
        """(hash at ``revision``, the peer's current revision, its compact revision),
        asked of ``peer``; raises its COMPACTED or FUTURE_REV, or TIMEOUT."""
        reply = await self._call(peer, CALL_HASHKV, struct.pack(">q", revision), timeout)
        if reply[:1] == b"\x01":
            raise errors.FUTURE_REV
        if reply[:1] == b"\x02":
            raise errors.COMPACTED
        return _HASH_REPLY.unpack_from(reply, 1)

    async def keep_alive(self, lease_id: int) -> int:
        """Renew a lease on the leader; returns its TTL, or 0 if it does not exist."""
        if self.is_leader:
            return self._renew(lease_id) or 0
        reply = await self._leader_call(CALL_KEEPALIVE, struct.pack(">q", lease_id))
        return int(struct.unpack(">q", reply)[0])

    async def lease_remaining(self, lease_id: int) -> int:
        """Seconds left on a lease by the leader's clock (-1: unknown)."""
        if self.is_leader:
            return self.lessor.remaining(lease_id, time.monotonic())
        reply = await self._leader_call(CALL_TTL, struct.pack(">q", lease_id))
        return int(struct.unpack(">q", reply)[0])

    async def learner_ready(self, member_id: int) -> bool:
        """Ask the leader (the only one who knows followers' logs) if a learner caught up."""
        if self.is_leader:
            return self.learner_in_sync(member_id)
        reply = await self._leader_call(CALL_LEARNER_READY, struct.pack(">Q", member_id))
        return reply == b"\x01"

    async def transfer_leadership(self, target: int, timeout: float | None = None) -> None:
        """Hand leadership to ``target`` and wait until it leads, for ``timeout`` seconds
        (the client's deadline, as etcd waits; default the request timeout)."""
        self._submit(lambda: self.raft.transfer_leadership(target))
        wait = self.config.request_timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + wait
        while self.raft.leader != target:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise errors.TIMEOUT_LEADER_TRANSFER
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.leader_changed.wait(), remaining)

    def new_lease_id(self) -> int:
        """A random positive 63-bit lease ID (chosen before proposing: apply stays pure)."""
        return self._rng.getrandbits(62) | (1 << 61)

    # --- peer frames ------------------------------------------------------------------------------

    def _on_frame(self, sender: int, kind: int, payload: bytes) -> None:
        if kind == transport.RAFT:
            message = transport.decode_message(payload)
            self._inbox.append(lambda: self.raft.step(message))  # _on_frames_done kicks
        elif kind == transport.CALL:
            call_id, call = _CALL.unpack_from(payload)
            body = payload[_CALL.size :]
            self._handle_call(sender, call_id, call, body)
        elif kind == transport.REPLY:
            (call_id,) = struct.unpack_from(">Q", payload)
            fut = self._calls.pop(call_id, None)
            if fut is not None and not fut.done():
                fut.set_result(payload[8:])

    def _on_frames_done(self) -> None:
        # What one read from a peer brought is handled at once, as one batch: a
        # follower's APPEND is synced and answered, a leader's acknowledgement commits
        # and applies, without waiting for the loop task's next turn.
        if self._inbox:
            self._kick(now=True)

    def _propose_forwarded(self, sender: int, data: bytes) -> None:
        if self.is_leader:
            self.outbox.forwarded(sender, self.raft.propose(data))

    def _handle_call(self, sender: int, call_id: int, call: int, body: bytes) -> None:
        def reply(data: bytes) -> None:
            self.transport.send(sender, transport.REPLY, struct.pack(">Q", call_id) + data)

        if call == CALL_PROPOSE:
            self._submit(lambda: self._propose_forwarded(sender, body))
        elif call == CALL_READ_INDEX:
            ctx = b"r" + struct.pack(">QQ", sender, call_id)
            self._remote_reads[ctx] = (sender, call_id)
            self._submit(lambda: self._remote_read_index(ctx, 20))
        elif call == CALL_KEEPALIVE:
            (lease_id,) = struct.unpack(">q", body)
            ttl = self._renew(lease_id) if self.is_leader else None
            reply(struct.pack(">q", ttl or 0))
        elif call == CALL_TTL:
            (lease_id,) = struct.unpack(">q", body)
            reply(struct.pack(">q", self.lessor.remaining(lease_id, time.monotonic())))
        elif call == CALL_LEARNER_READY:
            (member,) = struct.unpack(">Q", body)
            reply(b"\x01" if not self.is_leader or self.learner_in_sync(member) else b"\x00")
        elif call == CALL_HASHKV:
            (revision,) = struct.unpack(">q", body)

            async def answer_hash() -> None:
                try:
                    value, _, compact = await self.hash_kv_async(revision)
                except EtcdError as exc:
                    reply(b"\x01" if exc is errors.FUTURE_REV else b"\x02")
                    return
                reply(b"\x00" + _HASH_REPLY.pack(value, self.sm.kv.revision, compact))

            task = asyncio.get_running_loop().create_task(answer_hash())
            self._hash_tasks.add(task)
            task.add_done_callback(self._hash_tasks.discard)


HASH_INLINE_KEYS = 20_000
"""Below this many keys a hash is computed on the loop (~0.1 s at most): a fork costs
more than it saves."""

_HASH_REPLY = struct.Struct(">Iqq")
"""CALL_HASHKV's answer after a status byte: hash, current revision, compact revision."""


def _lease_revoke(lease_id: int) -> PbMessage:
    from keel_store.pb import rpcpb  # noqa: PLC0415 - keep the loop module light

    return rpcpb.LeaseRevokeRequest(ID=lease_id)


def _lease_checkpoint(remaining: list[tuple[int, int]]) -> PbMessage:
    from keel_store.pb import rpcpb  # noqa: PLC0415 - keep the loop module light

    return rpcpb.LeaseCheckpointRequest(
        checkpoints=[rpcpb.LeaseCheckpoint(ID=i, remaining_TTL=left) for i, left in remaining]
    )


__all__ = ["NodeConfig", "StoreNode"]
