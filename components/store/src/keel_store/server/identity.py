"""Which member this is and of which cluster, decided once and kept in the data directory.

etcd writes its member ID and cluster ID into its WAL's metadata when it bootstraps and
goes by them on every restart, whatever ``--initial-cluster`` says then. keel-store keeps
them in ``<data-dir>/member/keel-identity.json``. A member of the initial cluster derives
both from its flags; a member joining a running cluster (``--initial-cluster-state=
existing``) asks its peers (:func:`keel_store.server.transport.ask_members`), as etcd's
asks their ``/members``, since ``member add`` hashed the time into its ID.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from keel_store.server import transport
from keel_store.server.config import NodeConfig
from keel_store.server.members import ClusterConfigError, Member
from keel_store.wal import OSFileSystem

log = logging.getLogger("keel_store.node")

FILE = "keel-identity.json"


def path(config: NodeConfig) -> Path:
    return config.data_dir / "member" / FILE


def load(config: NodeConfig) -> tuple[int, int] | None:
    """(member ID, cluster ID) kept by an earlier start, or None.

    ClusterConfigError if the file is there but unreadable: guessing the IDs again
    could make this member someone else."""
    where = path(config)
    try:
        doc = json.loads(where.read_text())
        return int(doc["member_id"]), int(doc["cluster_id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClusterConfigError(f"{where}: unreadable member identity ({exc})") from None


def save(config: NodeConfig, member_id: int, cluster_id: int) -> None:
    """Write the identity durably (a temporary file, fsynced, renamed, directory synced)."""
    where = path(config)
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"member_id": member_id, "cluster_id": cluster_id}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, where)
    OSFileSystem().fsync_dir(str(where.parent))


async def resolve(config: NodeConfig, has_wal: bool) -> None:
    """Settle ``config.cluster``'s IDs for this start: as kept, else from the flags (a
    new cluster, or a data directory from before the identity was kept), else (joining,
    no WAL yet) from a peer; then keep them. ClusterConfigError if no peer answers or
    the flags do not match the running cluster (etcd's messages)."""
    cluster, name = config.cluster, config.name
    kept = load(config)
    if kept is not None:
        cluster.rekey(name, *kept)
        return
    if config.join_existing and not has_wal:
        me = cluster.by_name(name)
        urls = [u for m in cluster.members.values() if m is not me for u in m.peer_urls]
        await _adopt_remote(config, urls)
    save(config, cluster.id_of(name), cluster.cluster_id)


async def _adopt_remote(config: NodeConfig, urls: list[str]) -> None:
    """etcd's ``GetClusterFromRemotePeers`` and ``ValidateClusterAndAssignIDs``: the
    first peer's answer that matches the flags is taken (a peer that has not applied
    ``member add`` yet lists one member less: the next one is asked)."""
    cluster = config.cluster
    mismatch: ClusterConfigError | None = None
    for url in urls:
        try:
            answer = await transport.ask_members(url, cluster.token, config.peer_client_ssl)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("could not get cluster response from %s: %s", url, exc)
            continue
        remote = [
            Member(int(m["id"]), str(m["name"]), list(m["peer_urls"]), [], bool(m["is_learner"]))
            for m in answer["members"]
        ]
        try:
            cluster.adopt(int(answer["cluster_id"]), remote)
        except ClusterConfigError as exc:
            mismatch = exc
            continue
        return
    if mismatch is not None:
        raise mismatch
    raise ClusterConfigError(
        "cannot fetch cluster info from peer urls: "
        "could not retrieve cluster information from the given URLs"
    )
