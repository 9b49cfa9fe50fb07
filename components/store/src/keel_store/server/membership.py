"""A member's view of the cluster: peers to dial, the member list, Raft's configuration.

The replicated member table (in the state machine) is the truth; the leader moves the
Raft configuration towards it one change at a time, and the peer transport follows
it. Each member publishes its name and client URLs through the log at every start
(etcd's ``publish``), so every member lists them, also those of a member that is down;
it also announces them when it connects to a peer, which lists them until it has
applied the published ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from keel_store.mvcc import commands, errors
from keel_store.mvcc.commands import Kind
from keel_store.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    ProposalDroppedError,
    RaftNode,
    SnapshotMeta,
)
from keel_store.server import transport

if TYPE_CHECKING:
    from keel_store.mvcc.store import StateMachine
    from keel_store.server.config import NodeConfig
    from keel_store.server.members import Cluster

log = logging.getLogger("keel_store.node")

LEARNER_READY_FRACTION = 0.9
"""etcd's ``readyPercent``: a learner may be promoted once its log holds 90% of ours."""

PUBLISH_RETRY = 0.5
"""Seconds between two attempts to publish this member's attributes (each waits for a
leader up to the request timeout)."""

HEALTH_INTERVAL = 5.0
"""etcd's ``HealthInterval``: with ``--strict-reconfig-check``, a voting member must
have been connected this long (seconds) to count as healthy for a membership change."""


def force_new_cluster(
    me: Any, snap: SnapshotMeta, entries: list[Entry], hard_state: HardState
) -> tuple[list[Entry], HardState]:
    """``--force-new-cluster`` (etcd's ``restartAsStandaloneNode``): the entries to write
    after the recovered log, and the hard state that commits all of it.

    ``me`` is this member (an ``rpcpb.Member``: ID, name, peer URLs). The whole local
    log is committed: with the quorum gone for good, an entry this member holds may have
    been acknowledged (etcd drops those past its last persisted commit index, which can
    lag the leader's). Then, in the log so that they hold after later restarts: the
    member table reduced to this member, and the Raft configuration changes that make
    it the only voter (itself added first if it was not one, then every other member
    removed).
    """
    conf = snap.conf
    for entry in entries:
        if entry.type is EntryType.CONF_CHANGE:
            with contextlib.suppress(ConfChangeError):
                conf = ConfChange.decode(entry.data).apply(conf)
    last = entries[-1] if entries else None
    index = last.index if last else snap.index
    term = max(hard_state.term, last.term if last else snap.term)
    changes = [] if me.ID in conf.voters else [ConfChange(ConfChangeType.ADD_VOTER, me.ID)]
    changes += [
        ConfChange(ConfChangeType.REMOVE, nid)
        for nid in sorted({*conf.voters, *conf.learners})
        if nid != me.ID
    ]
    extra = [
        Entry(term, index + 1, EntryType.NORMAL, commands.encode(Kind.FORCE_NEW_CLUSTER, 0, me))
    ]
    extra += [
        Entry(term, index + 2 + i, EntryType.CONF_CHANGE, change.encode())
        for i, change in enumerate(changes)
    ]
    return extra, HardState(term=term, vote=hard_state.vote, commit=extra[-1].index)


class MembershipMixin:
    """Membership for :class:`~keel_store.server.node.StoreNode`."""

    raft: RaftNode
    sm: StateMachine
    config: NodeConfig
    transport: transport.PeerTransport
    attributes: dict[int, tuple[str, list[str]]]
    cluster: Cluster
    member_id: int
    removed: bool
    on_removed: Any
    replayed: asyncio.Event
    stopped: bool
    propose: Any

    def _on_hello(self, sender: int, info: dict[str, object]) -> None:
        urls = info.get("client_urls")
        name = info.get("name")
        if isinstance(urls, list) and isinstance(name, str):
            self.attributes[sender] = (name, [str(u) for u in urls])

    def _refresh_peers(self) -> None:
        self.transport.set_peers(
            {m.id: m.peer_urls[0] for m in self.sm.members.values() if m.peer_urls}
        )

    def member_list(self) -> list[Any]:
        """etcd's Member messages: replicated membership plus announced attributes."""
        from keel_store.pb import rpcpb  # noqa: PLC0415

        out = []
        for m in sorted(self.sm.members.values(), key=lambda m: m.id):
            name, client_urls = m.name, m.client_urls
            if not client_urls:  # not published yet (or by an older keel-store)
                name, client_urls = self.attributes.get(m.id, (name, client_urls))
            out.append(
                rpcpb.Member(
                    ID=m.id,
                    name=name,
                    peerURLs=m.peer_urls,
                    clientURLs=client_urls,
                    isLearner=m.is_learner,
                )
            )
        return out

    async def publish(self) -> None:
        """Put this member's name and client URLs in the replicated member table (etcd's
        ``publish``, at every start): once the entries committed before the start are
        applied, proposed until one attempt is applied; given up if this member is not
        in the table (removed: it stops)."""
        from keel_store.pb import rpcpb  # noqa: PLC0415

        me = self.cluster.members[self.member_id]
        request = rpcpb.Member(ID=self.member_id, name=me.name, clientURLs=me.client_urls)
        await self.replayed.wait()
        while not self.stopped:
            try:
                await self.propose(Kind.MEMBER_ATTR, request)
            except errors.EtcdError as exc:
                if exc == errors.MEMBER_NOT_FOUND:
                    return
                log.debug("publishing this member's attributes: %s; retrying", exc)
                await asyncio.sleep(PUBLISH_RETRY)
                continue
            log.info(
                "published local member to cluster through raft (name %s, client URLs %s,"
                " cluster %x)",
                me.name,
                ",".join(me.client_urls),
                self.cluster.cluster_id,
            )
            return

    def _members_info(self) -> dict[str, object]:
        """What a member joining the cluster asks its peers for (``server.identity``):
        the cluster ID and the replicated member list (IDs, names, peer URLs)."""
        return {
            "cluster_id": self.cluster.cluster_id,
            "members": [
                {
                    "id": m.ID,
                    "name": m.name,
                    "peer_urls": list(m.peerURLs),
                    "is_learner": m.isLearner,
                }
                for m in self.member_list()
            ],
        }

    # --- --strict-reconfig-check (etcd's mayAddMember / mayRemoveMember / mayPromoteMember)

    def _started(self, member_id: int) -> bool:
        """etcd's ``IsStarted``: the member has a name, from ``--initial-cluster``,
        published, or announced when it connected (a member added by MemberAdd has none
        until then)."""
        record = self.sm.members.get(member_id)
        return member_id in self.attributes or bool(record is not None and record.name)

    def _voters(self) -> list[int]:
        return [m.id for m in self.sm.members.values() if not m.is_learner]

    def _connected_voters(self) -> int:
        """Voting members connected to us for :data:`HEALTH_INTERVAL` (we count)."""
        since = time.monotonic() - HEALTH_INTERVAL
        count = 0
        for mid in self._voters():
            active = self.transport.active_since(mid)
            if mid == self.raft.id or (active is not None and active <= since):
                count += 1
        return count

    def check_add(self, is_learner: bool) -> None:
        """Raise etcd's error if adding a member could cost the quorum: too few started
        members for the new size (voting members only), or this member not connected
        to every voting member for :data:`HEALTH_INTERVAL` (learners too, as etcd)."""
        if not self.config.strict_reconfig_check:
            return
        voters = self._voters()
        members = len(voters) + 1
        started = sum(1 for mid in voters if self._started(mid))
        # One started member adding a second: restoring a cluster from a backup.
        if not is_learner and not (started == 1 and members == 2) and started < members // 2 + 1:
            raise errors.NOT_ENOUGH_STARTED
        if self._connected_voters() != len(voters):
            raise errors.UNHEALTHY

    def check_remove(self, member_id: int) -> None:
        """Raise etcd's error if removing this (voting) member could cost the quorum."""
        if not self.config.strict_reconfig_check:
            return
        record = self.sm.members.get(member_id)
        if record is not None and record.is_learner:
            return
        rest = [mid for mid in self._voters() if mid != member_id]
        if sum(1 for mid in rest if self._started(mid)) < len(rest) // 2 + 1:
            raise errors.NOT_ENOUGH_STARTED
        if member_id != self.raft.id and self.transport.active_since(member_id) is None:
            return  # a member that is down is not part of the working quorum
        voters = len(self._voters())
        if self._connected_voters() - 1 < 1 + (voters - 1) // 2:
            raise errors.UNHEALTHY

    def check_promote(self, member_id: int) -> None:
        """Raise etcd's error if promoting this learner leaves too few started voters."""
        if not self.config.strict_reconfig_check:
            return
        voters = self._voters()
        # The learner counts as a started member of the new configuration.
        started = 1 + sum(1 for mid in voters if self._started(mid))
        if started < (len(voters) + 1) // 2 + 1:
            raise errors.NOT_ENOUGH_STARTED

    def learner_in_sync(self, member_id: int) -> bool:
        """Leader only: has this learner's log caught up enough to vote (etcd's check)?

        A member the leader has no progress for (not yet in the Raft configuration,
        or not a member at all) passes, as with etcd; promoting it then fails for what
        it is (unknown member, not a learner).
        """
        progress = self.raft.progress.get(member_id)
        if progress is None or member_id == self.raft.id:
            return True
        return progress.match >= self.raft.log.last_index() * LEARNER_READY_FRACTION

    def _reconcile_membership(self) -> None:
        """Leader: move the Raft configuration one step towards the replicated members."""
        if self.raft.pending_conf_index > self.raft.log.applied:
            return
        conf = self.raft.conf
        change: ConfChange | None = None
        for m in sorted(self.sm.members.values(), key=lambda m: m.id):
            if m.is_learner and m.id not in conf.learners and m.id not in conf.voters:
                change = ConfChange(ConfChangeType.ADD_LEARNER, m.id)
            elif not m.is_learner and m.id not in conf.voters:
                change = ConfChange(ConfChangeType.ADD_VOTER, m.id)
            if change:
                break
        if change is None:
            for nid in (*conf.voters, *conf.learners):
                if nid not in self.sm.members:
                    change = ConfChange(ConfChangeType.REMOVE, nid)
                    break
        if change is not None:
            with contextlib.suppress(ProposalDroppedError):
                self.raft.propose_conf_change(change)
                log.info("membership: proposed %s %x", change.type.value, change.node_id)

    # --- removal: "the member has been permanently removed from the cluster" (etcd) --------

    def _on_removed(self, delay: float, why: str) -> None:
        """This member was removed: it applied its own removal (``delay`` 1 s, etcd's
        ``stopWithDelay``, so that the leader's commit reaches the others), or a peer
        refused it as removed (at once). Logged with etcd's words, then ``on_removed``
        (the daemon stops, exit status 0)."""
        if self.removed:
            return
        self.removed = True
        log.warning(
            "server error: the member has been permanently removed from the cluster (%s)", why
        )
        log.warning("data-dir used by this member must be removed")
        asyncio.get_running_loop().call_later(delay, self._stop_removed)

    def _stop_removed(self) -> None:
        if self.on_removed is not None:
            self.on_removed()
