"""etcd's v3 protocol messages, generated at build time (see :mod:`keel_store.protogen`).

Import the message modules from here rather than from ``_generated`` so that a missing
build step fails with one clear message instead of an obscure ``ImportError``.
"""

from __future__ import annotations

from typing import Any

try:
    from keel_store._generated.authpb import auth_pb2 as authpb
    from keel_store._generated.etcdserverpb import rpc_pb2 as rpcpb
    from keel_store._generated.etcdserverpb import rpc_pb2_grpc as _rpcgrpc
    from keel_store._generated.healthpb import health_pb2 as healthpb
    from keel_store._generated.healthpb import health_pb2_grpc as _healthgrpc
    from keel_store._generated.mvccpb import kv_pb2 as mvccpb
    from keel_store._generated.v3electionpb import v3election_pb2 as electionpb
    from keel_store._generated.v3electionpb import v3election_pb2_grpc as _electiongrpc
    from keel_store._generated.v3lockpb import v3lock_pb2 as lockpb
    from keel_store._generated.v3lockpb import v3lock_pb2_grpc as _lockgrpc
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "keel_store: the etcd protocol stubs are missing; reinstall keel-store "
        "(its build hook compiles them) or run `python -m keel_store.protogen`"
    ) from exc

rpcgrpc: Any = _rpcgrpc
"""Servicers and stubs (untyped generated code, hence ``Any``)."""
lockgrpc: Any = _lockgrpc
"""etcd's v3lock service (``/v3lockpb.Lock/...``)."""
electiongrpc: Any = _electiongrpc
"""etcd's v3election service (``/v3electionpb.Election/...``)."""
healthgrpc: Any = _healthgrpc
"""gRPC's health service (``/grpc.health.v1.Health/...``), as etcd serves it."""

__all__ = [
    "authpb",
    "electiongrpc",
    "electionpb",
    "healthgrpc",
    "healthpb",
    "lockgrpc",
    "lockpb",
    "mvccpb",
    "rpcgrpc",
    "rpcpb",
]
