"""The errors the state machine and server return, with etcd's exact codes and strings.

etcd's Go client maps errors back to typed values by comparing message strings
(``rpctypes.errStringToError``), so these must match etcd 3.4 word for word.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """gRPC status codes (numbers as in grpc's ``StatusCode``)."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    FAILED_PRECONDITION = 9
    OUT_OF_RANGE = 11
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class EtcdError(Exception):
    """An error the client sees as a gRPC status with ``code`` and ``message``."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, EtcdError)
            and other.code == self.code
            and other.message == self.message
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"


def _e(code: Code, message: str) -> EtcdError:
    return EtcdError(code, message)


EMPTY_KEY = _e(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = _e(Code.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = _e(Code.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = _e(Code.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = _e(Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _e(Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
COMPACTED = _e(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _e(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = _e(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
CORRUPT = _e(Code.DATA_LOSS, "etcdserver: corrupt cluster")
LEASE_NOT_FOUND = _e(Code.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXISTS = _e(Code.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _e(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")
MEMBER_EXISTS = _e(Code.FAILED_PRECONDITION, "etcdserver: member ID already exist")
PEER_URL_EXISTS = _e(Code.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
MEMBER_BAD_URLS = _e(Code.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND = _e(Code.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = _e(Code.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = _e(
    Code.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader",
)
NOT_ENOUGH_STARTED = _e(
    # etcd 3.4 maps this error to its client-side error value, not a gRPC status, so
    # gRPC sends Unknown (seen from 3.4.23); the FailedPrecondition meant is unused.
    Code.UNKNOWN,
    "etcdserver: re-configuration failed due to not enough started members",
)
UNHEALTHY = _e(Code.UNAVAILABLE, "etcdserver: unhealthy cluster")
REQUEST_TOO_LARGE = _e(Code.INVALID_ARGUMENT, "etcdserver: request is too large")
NO_LEADER = _e(Code.UNAVAILABLE, "etcdserver: no leader")
LEADER_CHANGED = _e(Code.UNAVAILABLE, "etcdserver: leader changed")
NOT_LEADER = _e(Code.FAILED_PRECONDITION, "etcdserver: not leader")
BAD_LEADER_TRANSFEREE = _e(Code.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
TIMEOUT = _e(Code.UNAVAILABLE, "etcdserver: request timed out")
PROPOSE_DEADLINE = _e(Code.UNKNOWN, "context deadline exceeded")
"""A proposal that never reached a leader: etcd's raft Propose blocks while there is
none and returns the request context's error, which gRPC sends as Unknown."""
TIMEOUT_LEADER_TRANSFER = _e(
    Code.UNAVAILABLE, "etcdserver: request timed out, leader transfer took too long"
)
NOT_CAPABLE = _e(Code.UNAVAILABLE, "etcdserver: not capable")
STOPPED = _e(Code.UNAVAILABLE, "etcdserver: server stopped")
AUTH_NOT_ENABLED = _e(Code.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
INVALID_AUTH_TOKEN = _e(Code.UNAUTHENTICATED, "etcdserver: invalid auth token")
AUTH_OLD_REVISION = _e(Code.INVALID_ARGUMENT, "etcdserver: revision of auth store is old")
PERMISSION_DENIED = _e(Code.PERMISSION_DENIED, "etcdserver: permission denied")
WATCH_CANCELED = _e(Code.CANCELLED, "etcdserver: watch canceled")
