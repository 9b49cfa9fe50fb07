"""Calls a member makes to the leader over the peer transport (besides Raft messages)."""

from __future__ import annotations

import struct

CALL_READ_INDEX, CALL_KEEPALIVE, CALL_TTL, CALL_PROPOSE, CALL_LEARNER_READY = 1, 2, 3, 4, 5
CALL_HASHKV = 6
"""Any member (not only the leader) answers: its key space hash at a revision."""
_CALL = struct.Struct(">QB")
"""Call frame header: call ID (for the reply), call kind."""
