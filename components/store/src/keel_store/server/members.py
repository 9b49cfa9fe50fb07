"""Cluster membership as etcd presents it: member IDs, names, peer and client URLs.

IDs are etcd's. A member of the initial cluster has the first 8 bytes of the SHA-1 of
its sorted peer URLs and the cluster token, so every member computes the same IDs from
the same ``--initial-cluster`` flags, and a cluster started with etcd's flags has etcd's
member IDs. The cluster ID hashes those IDs. A member added later (``member add``) hashes
its peer URLs and the time instead, so an ID is never given twice; the new member learns
its ID and the cluster's from its peers (:meth:`Cluster.adopt`) and keeps them in its
data directory (``server.identity``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


class ClusterConfigError(ValueError):
    """A bad ``--initial-cluster`` (or related flag); the message names the flag."""


@dataclass
class Member:
    """One member: what ``etcdctl member list`` shows."""

    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False


def member_id(peer_urls: list[str], token: str, now: int | None = None) -> int:
    """etcd's ``newMember`` ID: the SHA-1 of the sorted peer URLs, the cluster token
    and, for ``member add`` (whose token is empty), the Unix time in seconds; its first
    8 bytes as a big-endian 64-bit number."""
    text = "".join(sorted(peer_urls)) + token + ("" if now is None else str(now))
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") or 1


def cluster_id(member_ids: list[int]) -> int:
    """etcd's ``genID``: the SHA-1 of the sorted member IDs (8 bytes big-endian each)."""
    data = b"".join(mid.to_bytes(8, "big") for mid in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big")


def parse_initial_cluster(spec: str) -> dict[str, list[str]]:
    """``a=http://h:1,a=http://h:2,b=...`` -> {name: [peer URLs]} in order of appearance."""
    out: dict[str, list[str]] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ClusterConfigError(f"--initial-cluster: {item!r} is not NAME=PEER-URL")
        out.setdefault(name, []).append(url)
    if not out:
        raise ClusterConfigError("--initial-cluster: no members given")
    return out


class Cluster:
    """The members this member knows, and the cluster's identity."""

    def __init__(self, initial: dict[str, list[str]], token: str) -> None:
        self.token = token
        self.members: dict[int, Member] = {}
        for name, urls in initial.items():
            mid = member_id(urls, token)
            self.members[mid] = Member(mid, name, urls)
        self.cluster_id = cluster_id(list(self.members))

    def adopt(self, remote_id: int, remote: list[Member]) -> None:
        """Take a running cluster's IDs (etcd's ``ValidateClusterAndAssignIDs``): every
        member it lists must be one of ours with the same peer URLs, in the same number.
        ClusterConfigError (etcd's words) otherwise."""
        where = f"error validating peerURLs {{ClusterID:{remote_id:x} Members:[{_listed(remote)}]}}"
        if len(remote) != len(self.members):
            raise ClusterConfigError(f"{where}: member count is unequal")
        by_urls = {tuple(sorted(m.peer_urls)): m for m in self.members.values()}
        adopted: dict[int, Member] = {}
        for theirs in remote:
            ours = by_urls.get(tuple(sorted(theirs.peer_urls)))
            if ours is None:
                raise ClusterConfigError(
                    f"{where}: PeerURLs: no match found for existing member "
                    f"({theirs.id:x}, {theirs.peer_urls})"
                )
            adopted[theirs.id] = Member(
                theirs.id, ours.name, ours.peer_urls, ours.client_urls, theirs.is_learner
            )
        self.members = adopted
        self.cluster_id = remote_id

    def rekey(self, name: str, new_id: int, new_cluster_id: int) -> None:
        """This member's ID and the cluster's as kept in the data directory (a restart
        goes by them, as etcd's goes by its WAL, not by the flags)."""
        me = self.by_name(name)
        del self.members[me.id]
        me.id = new_id
        self.members[new_id] = me
        self.cluster_id = new_cluster_id

    def by_name(self, name: str) -> Member:
        for member in self.members.values():
            if member.name == name:
                return member
        raise ClusterConfigError(f"--initial-cluster: this member's --name {name!r} is not in it")

    def id_of(self, name: str) -> int:
        return self.by_name(name).id

    def self_peer_url(self, name: str) -> str:
        return self.by_name(name).peer_urls[0]

    def voter_ids(self) -> list[int]:
        return [m.id for m in self.members.values() if not m.is_learner]

    def peer_urls(self) -> dict[int, str]:
        return {m.id: m.peer_urls[0] for m in self.members.values()}


def _listed(members: list[Member]) -> str:
    return " ".join(f"&{{ID:{m.id:x} PeerURLs:{m.peer_urls}}}" for m in members)
