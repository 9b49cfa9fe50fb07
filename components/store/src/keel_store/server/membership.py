"""A member's view of the cluster: peers to dial, the member list, Raft's configuration.

The replicated member table (in the state machine) is the truth; the leader moves the
Raft configuration towards it one change at a time, and the peer transport follows
it. Names and client URLs are what each member announces when it connects.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from keel_store.raft import ConfChange, ConfChangeType, ProposalDroppedError, RaftNode
from keel_store.server import transport

if TYPE_CHECKING:
    from keel_store.mvcc.store import StateMachine

log = logging.getLogger("keel_store.node")

LEARNER_READY_FRACTION = 0.9
"""etcd's ``readyPercent``: a learner may be promoted once its log holds 90% of ours."""


class MembershipMixin:
    """Membership for :class:`~keel_store.server.node.StoreNode`."""

    raft: RaftNode
    sm: StateMachine
    transport: transport.PeerTransport
    attributes: dict[int, tuple[str, list[str]]]

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
            name, client_urls = self.attributes.get(m.id, (m.name, []))
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
