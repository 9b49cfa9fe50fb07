"""etcd's ``GET /debug/vars`` on the client port: Go's expvar page.

etcd 3.4 (``etcdhttp.HandleBasic``) serves every published expvar, sorted by name, one
per line: ``cmdline`` (the process's arguments), ``file_descriptor_limit`` (the soft
``RLIMIT_NOFILE``), ``memstats`` (Go's ``runtime.MemStats``) and ``raft.status``
(``raft.Status.MarshalJSON``: IDs in hex, the leader's view of each follower's
progress). keel-store publishes the same names and shapes except ``memstats``, which
describes Go's heap and has no honest counterpart in a Python process; its memory is
in ``/metrics`` (``process_resident_memory_bytes``).
"""

from __future__ import annotations

import json
import resource
import sys
from typing import TYPE_CHECKING

from keel_store.raft.messages import Role
from keel_store.raft.progress import ProgressState

if TYPE_CHECKING:
    from keel_store.raft.node import RaftNode

RAFT_STATES = {
    Role.FOLLOWER: "StateFollower",
    Role.CANDIDATE: "StateCandidate",
    Role.LEADER: "StateLeader",
    Role.PRE_CANDIDATE: "StatePreCandidate",
}
"""raft's ``StateType.String()``."""

PROGRESS_STATES = {
    ProgressState.PROBE: "StateProbe",
    ProgressState.REPLICATE: "StateReplicate",
    ProgressState.SNAPSHOT: "StateSnapshot",
}
"""raft's ``tracker.StateType.String()``."""


def raft_status(raft: RaftNode) -> str:
    """``raft.status`` as etcd's ``Status.MarshalJSON`` writes it: progress only on a
    leader (followers in ID order; Go's map order is random)."""
    progress = {}
    if raft.role is Role.LEADER:
        progress = {
            f"{nid:x}": {"match": pr.match, "next": pr.next, "state": PROGRESS_STATES[pr.state]}
            for nid, pr in sorted(raft.progress.items())
        }
    status = {
        "id": f"{raft.id:x}",
        "term": raft.term,
        "vote": f"{raft.vote:x}",
        "commit": raft.log.committed,
        "lead": f"{raft.leader:x}",
        "raftState": RAFT_STATES[raft.role],
        "applied": raft.log.applied,
        "progress": progress,
        "leadtransferee": f"{raft.lead_transferee:x}",
    }
    return go_json(status)


def go_json(value: object) -> str:
    """``value`` as Go's ``json.Marshal`` writes it: compact, UTF-8, ``<>&`` escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(raft: RaftNode) -> bytes:
    """The whole page, as Go's ``serveVars`` writes it."""
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    entries = {
        "cmdline": go_json(sys.argv),
        "file_descriptor_limit": str(fd_limit),
        "raft.status": raft_status(raft),
    }
    body = ",\n".join(f"{json.dumps(name)}: {value}" for name, value in entries.items())
    return f"{{\n{body}\n}}\n".encode()
