"""Keel store: Raft-replicated key-value store speaking the etcd v3 API."""
