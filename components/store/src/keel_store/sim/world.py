"""One simulated run: nodes, network, faults and clients, all driven by one seed."""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field

from keel_store.raft.config import RaftConfig
from keel_store.raft.log import RaftInvariantError
from keel_store.raft.membership import ConfChange, ConfChangeType, bootstrap_entries
from keel_store.raft.messages import MessageType, Ready, Role
from keel_store.raft.node import ProposalDroppedError, RaftNode
from keel_store.raft.storage import MemoryStorage
from keel_store.raft.types import EntryType, HardState
from keel_store.sim.clients import Client, Workload
from keel_store.sim.history import SimOp, check_linearizable
from keel_store.sim.invariants import (
    Invariants,
    InvariantViolation,
    check_leader_view,
    check_log_matching,
)
from keel_store.sim.kv import Command, KVStore
from keel_store.sim.network import Network
from keel_store.sim.options import SimOptions


class SimFailure(AssertionError):
    """A run broke an invariant, crashed the core, or made no progress after healing."""


@dataclass(slots=True)
class RunResult:
    """How one seed went."""

    seed: int
    ok: bool
    failure: str = ""
    committed: int = 0
    acked_writes: int = 0
    completed_ops: int = 0
    unknown_ops: int = 0
    elections: int = 0
    crashes: int = 0
    messages: int = 0
    snapshots_sent: int = 0
    membership_changes: int = 0
    transfers: int = 0
    unreachable_reports: int = 0
    linearizable: bool | None = None
    log: list[str] = field(default_factory=list)


class SimNode:
    """A node's durable storage (survives crashes) and its volatile process."""

    __slots__ = (
        "armed",
        "clock",
        "id",
        "incarnation",
        "kv",
        "proposals",
        "raft",
        "rate",
        "reads",
        "removed",
        "storage",
        "waiting_reads",
    )

    def __init__(self, nid: int, storage: MemoryStorage, rate: float) -> None:
        self.id = nid
        self.storage = storage
        self.rate = rate
        self.clock = 0.0
        self.raft: RaftNode | None = None
        self.kv = KVStore()
        self.proposals: dict[int, SimOp] = {}
        self.reads: dict[bytes, SimOp] = {}
        self.waiting_reads: list[tuple[int, SimOp]] = []
        self.incarnation = 0
        self.armed = False
        """Crash midway through persisting the next Ready."""
        self.removed = False


class World:
    """Everything in one run; :meth:`run` plays it out."""

    def __init__(self, seed: int, options: SimOptions, *, verbose: bool = False) -> None:
        self.seed = seed
        self.opts = options
        self.verbose = verbose
        self.rng = random.Random(f"world:{seed}")
        self.report_rng = random.Random(f"reports:{seed}")
        """Decides leader-unreachable reports (its own stream: runs without them replay
        exactly as before they existed)."""
        self.net = Network(
            random.Random(f"net:{seed}"),
            max_delay=options.max_delay,
            drop_rate=options.drop_rate,
            duplicate_rate=options.duplicate_rate,
            straggler_rate=options.straggler_rate,
            straggler_factor=options.straggler_factor,
        )
        self.inv = Invariants()
        self.now = 0
        self.nodes: dict[int, SimNode] = {}
        self.next_node_id = options.nodes + 1
        self.result = RunResult(seed, ok=True)
        self.history: list[SimOp] = []
        self.acked: dict[int, bool | None] = {}
        voters = tuple(range(1, options.nodes + 1))
        for nid in voters:
            self._add_node(nid, founders=voters)
        self.workload = Workload(random.Random(f"ops:{seed}"), options.keys)
        self.clients = [Client(c, target=self.rng.choice(voters)) for c in range(options.clients)]

    # --- nodes ------------------------------------------------------------------------------

    def _add_node(self, nid: int, founders: tuple[int, ...] = ()) -> SimNode:
        storage = MemoryStorage()
        if founders:
            storage.append(bootstrap_entries(founders))
            storage.set_hard_state(HardState(term=1, commit=len(founders)))
        skew = self.opts.clock_skew
        node = SimNode(nid, storage, self.rng.uniform(1 - skew, 1 + skew))
        self.nodes[nid] = node
        self._start(node)
        return node

    def _start(self, node: SimNode) -> None:
        node.incarnation += 1
        snap = node.storage.snapshot()
        node.kv = KVStore.load(snap.data)
        cfg = RaftConfig(
            id=node.id,
            election_ticks=self.opts.election_ticks,
            heartbeat_ticks=self.opts.heartbeat_ticks,
            pre_vote=self.opts.pre_vote,
            check_quorum=self.opts.check_quorum,
            max_entries_per_message=self.opts.max_entries_per_message,
            max_inflight=self.opts.max_inflight,
            applied=snap.meta.index,
            rng=random.Random(f"raft:{self.seed}:{node.id}:{node.incarnation}"),
        )
        for name, on in self.opts.unsafe.items():
            setattr(cfg, name, on)
        node.raft = RaftNode(cfg, node.storage)
        node.armed = False
        self.trace(f"node {node.id} starts (incarnation {node.incarnation})")

    def _crash(self, node: SimNode) -> None:
        self._report_unreachable(node.id)
        node.raft = None
        node.proposals.clear()
        node.reads.clear()
        node.waiting_reads.clear()
        self.result.crashes += 1
        self.trace(f"node {node.id} crashes")

    def _report_unreachable(self, leader: int) -> None:
        """Followers of ``leader`` see their connections to it close (most of them)."""
        for other in self.nodes.values():
            raft = other.raft
            if raft is None or other.id == leader or raft.leader != leader:
                continue
            if self.report_rng.random() < self.opts.unreachable_seen:
                raft.report_leader_unreachable(leader)
                self.result.unreachable_reports += 1
                self.trace(f"node {other.id} sees leader {leader} unreachable")

    def _report_unreachable_across(self, leader: int) -> None:
        """After a partition: followers cut off from ``leader`` may see it (a proxy that
        drops connections; a real partition usually closes nothing)."""
        for other in self.nodes.values():
            raft = other.raft
            if raft is None or raft.leader != leader or self.net.connected(other.id, leader):
                continue
            if self.report_rng.random() < self.opts.unreachable_seen / 2:
                raft.report_leader_unreachable(leader)
                self.result.unreachable_reports += 1
                self.trace(f"node {other.id} sees leader {leader} unreachable (partition)")

    def trace(self, text: str) -> None:
        """Record an event for ``--replay SEED -v``."""
        if self.verbose:
            self.result.log.append(f"[{self.now:5}] {text}")

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Play the run out; never raises for a failing seed (see ``RunResult.failure``)."""
        try:
            self._run()
        except (InvariantViolation, RaftInvariantError, SimFailure) as exc:
            self.result.ok = False
            self.result.failure = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug anywhere still names its seed
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.result.ok = False
            self.result.failure = (
                f"crash at step {self.now}: {type(exc).__name__}: {exc}"
                f" ({where.filename}:{where.lineno})"
            )
        self.result.messages = self.net.sent
        self.result.elections = self.inv.elections
        return self.result

    def _run(self) -> None:
        opts = self.opts
        total = opts.steps + opts.settle_steps
        commit_at_heal = 0
        for now in range(total):
            self.now = now
            if now < opts.steps:
                self._faults()
            elif now == opts.steps:
                self._heal()
                commit_at_heal = self._max_commit()
            self._deliver()
            self._tick()
            if now < total - opts.op_timeout:
                self._clients()
            self._expire_ops()
            for node in list(self.nodes.values()):
                if node.raft is not None:
                    self._process_ready(node)
            self._check_leader_view()
            if now % 100 == 99:
                check_log_matching({n.id: n.storage for n in self.nodes.values()})
        self._finish(commit_at_heal)

    def _check_leader_view(self) -> None:
        newest = 0
        leader = None
        for node in self.nodes.values():
            raft = node.raft
            term = node.storage.hard_state.term
            if raft is not None:
                term = max(term, raft.term)
                if raft.role is Role.LEADER and (leader is None or raft.term > leader.term):
                    leader = raft
            newest = max(newest, term)
        if leader is not None and leader.term == newest:
            check_leader_view(leader, {n.id: n.storage for n in self.nodes.values()})

    def _max_commit(self) -> int:
        return max((n.raft.log.committed for n in self.nodes.values() if n.raft), default=0)

    def _faults(self) -> None:
        rng, opts = self.rng, self.opts
        live = [n for n in self.nodes.values() if not n.removed]
        if rng.random() < opts.crash_rate:
            # Half the crashes hit the leader: that is where Raft's hard cases start.
            leader = self._leader()
            node = leader if leader is not None and rng.random() < 0.5 else rng.choice(live)
            if node.raft is not None:
                if rng.random() < opts.torn_ready_rate:
                    node.armed = True
                else:
                    self._crash(node)
        for node in live:
            if node.raft is None and rng.random() < opts.restart_rate:
                self._start(node)
        if rng.random() < opts.partition_rate:
            if self.net.groups:
                self.net.heal()
                self.trace("network heals")
            else:
                leader = self._leader()
                if leader is not None and rng.random() < 0.5:
                    self.net.groups = {n.id: int(n is leader) for n in live}
                else:
                    self.net.partition(sorted(n.id for n in live))
                self.trace(f"network partitions: {self.net.groups}")
                if leader is not None:
                    self._report_unreachable_across(leader.id)
        reports = self.report_rng
        if reports.random() < opts.unreachable_report_rate:
            # A report that may be wrong: about the node's leader, alive or not, or about
            # any other node.
            node = reports.choice(live)
            if node.raft is not None:
                target = (
                    node.raft.leader
                    if reports.random() < 0.7
                    else reports.choice(sorted(self.nodes))
                )
                node.raft.report_leader_unreachable(target)
                self.result.unreachable_reports += 1
                self.trace(f"node {node.id} is told {target} is unreachable")
        if rng.random() < opts.membership_rate:
            self._change_membership()
        if rng.random() < opts.transfer_rate:
            leader = self._leader()
            if leader is not None and leader.raft is not None:
                others = [v for v in leader.raft.conf.voters if v != leader.id]
                if others:
                    to = rng.choice(others)
                    try:
                        leader.raft.transfer_leadership(to)
                        self.result.transfers += 1
                        self.trace(f"node {leader.id} transfers leadership to {to}")
                    except ProposalDroppedError:
                        pass

    def _leader(self) -> SimNode | None:
        leaders = [
            n for n in self.nodes.values() if n.raft is not None and n.raft.role is Role.LEADER
        ]
        return max(leaders, key=lambda n: n.raft.term if n.raft else 0) if leaders else None

    def _change_membership(self) -> None:
        leader = self._leader()
        if leader is None or leader.raft is None or self.opts.spare_nodes <= 0:
            return
        conf = leader.raft.conf
        if conf.learners:
            change = ConfChange(ConfChangeType.ADD_VOTER, conf.learners[0])
        elif len(conf.voters) > self.opts.nodes:
            change = ConfChange(ConfChangeType.REMOVE, self.rng.choice(conf.voters))
        elif self.next_node_id <= self.opts.nodes + self.opts.spare_nodes:
            change = ConfChange(ConfChangeType.ADD_LEARNER, self.next_node_id)
        else:
            return
        try:
            leader.raft.propose_conf_change(change)
        except ProposalDroppedError:
            return
        self.result.membership_changes += 1
        self.trace(f"node {leader.id} proposes {change}")
        if change.type is ConfChangeType.ADD_LEARNER:
            self.next_node_id += 1
            self._add_node(change.node_id)

    def _heal(self) -> None:
        self.net.heal()
        self.net.drop_rate = 0.0
        self.net.duplicate_rate = 0.0
        for node in self.nodes.values():
            node.armed = False
            if node.raft is None and not node.removed:
                self._start(node)
        self.trace("faults stop: network heals, every node is up")

    def _deliver(self) -> None:
        inv = self.inv
        for m in self.net.due(self.now):
            node = self.nodes.get(m.to)
            if node is None or node.raft is None:
                continue
            raft = node.raft
            raft.step(m)
            if raft.role is Role.LEADER:
                inv.saw_leader(raft)

    def _tick(self) -> None:
        inv = self.inv
        for node in self.nodes.values():
            raft = node.raft
            if raft is None:
                continue
            node.clock += node.rate
            while node.clock >= 1.0:
                node.clock -= 1.0
                raft.tick()
                if raft.role is Role.LEADER:
                    inv.saw_leader(raft)

    # --- clients ----------------------------------------------------------------------------

    def _clients(self) -> None:
        for client in self.clients:
            if client.op is None and self.now >= client.next_at:
                self._issue(client)

    def _issue(self, client: Client) -> None:
        node = self.nodes.get(client.target)
        if node is None or node.raft is None:
            client.target = self.rng.choice(sorted(self.nodes))
            client.next_at = self.now + 2
            return
        raft = node.raft
        op = self.workload.next_op(client.id, self.now, self.opts.op_timeout)
        op.node = node.id
        try:
            if op.kind == "get":
                ctx = str(op.op_id).encode()
                raft.read_index(ctx)
                node.reads[ctx] = op
            else:
                cmd = Command(op.op_id, op.kind, op.key, op.value, op.expected)
                raft.propose(cmd.encode())
                node.proposals[op.op_id] = op
        except ProposalDroppedError:
            # Refused before entering the log: a definite failure, not part of the history.
            client.target = raft.leader or self.rng.choice(sorted(self.nodes))
            client.next_at = self.now + 2
            return
        if raft.role is Role.LEADER:
            self.inv.saw_leader(raft)
        client.op = op
        self.history.append(op)

    def _complete(self, op: SimOp, output: str | bool | None) -> None:
        if op.ret is not None or self.clients[op.client].op is not op:
            return  # already timed out: the client no longer listens
        op.ret = self.now
        op.output = output
        self.result.completed_ops += 1
        if op.kind != "get":
            self.acked[op.op_id] = output if isinstance(output, bool) else None
        client = self.clients[op.client]
        client.op = None
        client.next_at = self.now + self.rng.randint(0, 3)

    def _expire_ops(self) -> None:
        for client in self.clients:
            op = client.op
            if op is not None and self.now >= op.deadline:
                client.op = None
                client.next_at = self.now + 1
                client.target = self.rng.choice(sorted(self.nodes))
                self.result.unknown_ops += 1

    # --- a node's Ready ---------------------------------------------------------------------

    def _process_ready(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        while raft.has_ready():
            rd = raft.ready()
            if node.armed:
                self._torn_persist(node, rd)
                return
            if self.verbose and rd.soft_state is not None:
                self.trace(
                    f"node {node.id} is {rd.soft_state.role.value} in term {raft.term}"
                    f" (leader {rd.soft_state.leader}, last {raft.log.last_index()},"
                    f" commit {raft.log.committed}, voters {raft.conf.voters})"
                )
            storage = node.storage
            if rd.snapshot is not None:
                storage.apply_snapshot(rd.snapshot)
                node.kv = KVStore.load(rd.snapshot.data)
            storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            now = self.now
            for m in rd.messages:
                if m.type is MessageType.SNAPSHOT:
                    self.result.snapshots_sent += 1
                self.net.send(m, now)
            for entry in rd.committed_entries:
                self.inv.saw_apply(node.id, entry)
                if entry.type is EntryType.CONF_CHANGE:
                    self._saw_conf_change(node, entry.data)
                elif entry.data:
                    cmd = Command.decode(entry.data)
                    result = node.kv.apply(cmd)
                    op = node.proposals.pop(cmd.op_id, None)
                    if op is not None:
                        self._complete(op, result)
            for rs in rd.read_states:
                op = node.reads.pop(rs.context, None)
                if op is not None:
                    node.waiting_reads.append((rs.index, op))
            raft.advance(rd)
            self._serve_reads(node, raft)
            self._maybe_compact(node, raft)
        if node.removed and raft.id not in raft.conf.voters:
            node.raft = None
            self.trace(f"node {node.id} shuts down: removed from the cluster")

    def _torn_persist(self, node: SimNode, rd: Ready) -> None:
        """Crash while persisting ``rd``: a prefix of its records reaches the disk."""
        rng = self.rng
        keep = rng.randint(0, len(rd.entries))
        if rd.snapshot is not None:
            # The snapshot file is written before the log records that follow it.
            if rng.random() < 0.5:
                self.trace(f"node {node.id} crashes before installing a snapshot")
                self._crash(node)
                return
            node.storage.apply_snapshot(rd.snapshot)
        node.storage.append(rd.entries[:keep])
        if keep == len(rd.entries) and rd.hard_state is not None and rng.random() < 0.5:
            node.storage.set_hard_state(rd.hard_state)
        self.trace(f"node {node.id} crashes mid-write: kept {keep}/{len(rd.entries)} entries")
        self._crash(node)

    def _saw_conf_change(self, node: SimNode, data: bytes) -> None:
        change = ConfChange.decode(data)
        if change.type is ConfChangeType.REMOVE:
            target = self.nodes.get(change.node_id)
            if target is not None and not target.removed:
                target.removed = True
                self.trace(f"node {change.node_id} is removed (applied on node {node.id})")
                if target is not node and target.raft is not None:
                    target.raft = None

    def _serve_reads(self, node: SimNode, raft: RaftNode) -> None:
        if not node.waiting_reads:
            return
        applied = raft.log.applied
        still = []
        for index, op in node.waiting_reads:
            if index <= applied:
                self._complete(op, node.kv.get(op.key))
            else:
                still.append((index, op))
        node.waiting_reads = still

    def _maybe_compact(self, node: SimNode, raft: RaftNode) -> None:
        applied = raft.log.applied
        storage = node.storage
        if applied - storage.snapshot().meta.index < self.opts.compact_every:
            return
        if applied > storage.last_index():
            return
        storage.create_snapshot(applied, raft.conf, node.kv.dump())
        storage.compact(applied - self.opts.compact_every // 3)

    # --- the end ----------------------------------------------------------------------------

    def _finish(self, commit_at_heal: int) -> None:
        check_log_matching({n.id: n.storage for n in self.nodes.values()})
        result = self.result
        result.committed = self._max_commit()
        result.acked_writes = len(self.acked)
        members = [n for n in self.nodes.values() if n.raft is not None and not n.removed]
        stalled = self._leader() is None or result.committed <= commit_at_heal
        if stalled and self.opts.check_liveness:
            raise SimFailure(
                f"liveness: no leader or no commit in {self.opts.settle_steps} fault-free"
                f" steps (commit {result.committed}, was {commit_at_heal} at heal)"
            )
        top = max((n.raft.log.applied for n in members if n.raft), default=0)
        for node in members:
            if node.raft is None or node.raft.log.applied < top:
                continue
            for op_id, output in self.acked.items():
                if op_id not in node.kv.results:
                    raise InvariantViolation(
                        f"acknowledged write lost: op {op_id} is not in node {node.id}'s state"
                    )
                if output is not None and node.kv.results[op_id] != output:
                    raise InvariantViolation(
                        f"acknowledged write changed: op {op_id} returned {output}, node"
                        f" {node.id} applied it with {node.kv.results[op_id]}"
                    )
        if self.opts.check_linearizability:
            verdict, why = check_linearizable(self.history)
            result.linearizable = verdict
            if verdict is False:
                raise SimFailure(f"history is not linearizable: {why}")


def run_seed(seed: int, options: SimOptions | None = None, *, verbose: bool = False) -> RunResult:
    """Run one seed; the same seed and options always give the same run."""
    return World(seed, options or SimOptions(), verbose=verbose).run()
