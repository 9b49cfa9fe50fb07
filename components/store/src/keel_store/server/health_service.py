"""gRPC's standard health service (``grpc.health.v1.Health``), as etcd 3.4 serves it on
the client port: grpc-go's health server with the empty service name set to SERVING.

So the usual gRPC health probes work against keel-store as against etcd (Kubernetes'
``grpc:`` liveness probes, ``grpc-health-probe -addr=...``):

* ``Check("")`` is SERVING; ``Check`` of any other name fails NOT_FOUND ``unknown
  service`` (grpc-go's text).
* ``Watch`` sends the current status (SERVICE_UNKNOWN for a name not known), then
  each change, until the client goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from keel_store.pb import healthgrpc, healthpb

SERVING = healthpb.HealthCheckResponse.SERVING
NOT_SERVING = healthpb.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = healthpb.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(healthgrpc.HealthServicer):  # type: ignore[misc]
    """The statuses by service name ("" is the whole server), and their watchers."""

    def __init__(self) -> None:
        self._statuses: dict[str, Any] = {"": SERVING}
        self._changed = asyncio.Event()

    def set_status(self, service: str, status: Any) -> None:
        """Set ``service``'s status; watchers hear of a change."""
        if self._statuses.get(service) != status:
            self._statuses[service] = status
            self._changed.set()
            self._changed = asyncio.Event()

    async def Check(self, request: Any, context: Any) -> Any:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return healthpb.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        last = None
        while True:
            status = self._statuses.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                last = status
                yield healthpb.HealthCheckResponse(status=status)
            await self._changed.wait()
