"""Cluster membership as etcd presents it: member IDs, names, peer and client URLs.

Member IDs are derived exactly as etcd derives them (the first 8 bytes of the SHA-1
of the sorted peer URLs and the cluster token), so every member computes the same IDs
from the same ``--initial-cluster`` flags without talking to the others first, and a
cluster started with etcd's flags has etcd's member IDs.
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


def member_id(peer_urls: list[str], token: str) -> int:
    """etcd's ``newMember`` ID (without its time suffix): the SHA-1 of the sorted peer
    URLs and the cluster token, its first 8 bytes as a big-endian 64-bit number."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


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
        # One ID for the whole life of the cluster, known to members that join later:
        # derived from the token alone (etcd hashes the initial member IDs instead).
        digest = hashlib.sha1(b"keel-cluster:" + token.encode()).digest()
        self.cluster_id = int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)

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
