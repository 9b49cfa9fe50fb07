"""Splitting large watch responses (``WatchCreateRequest.fragment``), as etcd does.

A watch that catches up from an old revision can owe its client more bytes than fit
in one message. A client that created the watch with ``fragment`` gets the events in
several responses, each under ``--max-request-bytes`` (a single event larger than that
still goes alone), all but the last marked ``fragment``; etcd's clients join them back
into one response. Events of one response are never reordered or dropped.
"""

from __future__ import annotations

from keel_store.pb import rpcpb


def _field_size(payload: int) -> int:
    """Bytes an embedded message field takes: tag, length varint, payload."""
    return 1 + max(1, (payload.bit_length() + 6) // 7) + payload


def fragments(resp: rpcpb.WatchResponse, limit: int) -> list[rpcpb.WatchResponse]:
    """``resp`` as etcd's ``sendFragments`` would send it with ``limit`` bytes per message."""
    if len(resp.events) < 2 or resp.ByteSize() < limit:
        return [resp]
    shell = rpcpb.WatchResponse()
    shell.CopyFrom(resp)
    del shell.events[:]
    shell.fragment = True
    base = shell.ByteSize()
    events = list(resp.events)
    out: list[rpcpb.WatchResponse] = []
    i = 0
    while i < len(events):
        start, size = i, base
        while i < len(events):
            grown = size + _field_size(events[i].ByteSize())
            if i > start and grown >= limit:
                break
            size, i = grown, i + 1
        part = rpcpb.WatchResponse()
        part.CopyFrom(shell)
        part.events.extend(events[start:i])
        out.append(part)
    out[-1].fragment = False
    return out
