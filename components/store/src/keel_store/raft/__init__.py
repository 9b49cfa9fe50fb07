"""A pure, deterministic Raft core in the manner of etcd's raft library.

The core does no I/O and reads no clock: the caller feeds it messages, proposals and
ticks, and takes back what to persist, what to send and what to apply.
"""
