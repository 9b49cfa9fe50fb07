"""Discovery: running containers with a service name are registered in the store.

The store speaks the etcd v3 protocol, so the supervisor uses an etcd client library
(aetcd) rather than any Keel code: it works the same against keel-store and real etcd.
The layout is SkyDNS's: ``/skydns/<domain labels reversed>/<service>/<container id>``
holds ``{"host": <node address>, "port": <published port>}``. Each registration has its
own lease, renewed while the container runs and is healthy (or has no health check);
when it stops or turns unhealthy the lease is revoked, and if the node dies the lease
runs out after ``lease_ttl`` seconds, so stale entries never outlive their container
for long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from keel_supervisor.supervisor import Supervisor

if TYPE_CHECKING:
    import aetcd

    from keel_supervisor.daemon import Settings

log = logging.getLogger("keel.supervisor.discovery")
T = TypeVar("T")
TICK = 0.5


def domain_path(domain: str) -> str:
    """``keel.local`` -> ``/skydns/local/keel``."""
    labels = [label for label in domain.strip(".").split(".") if label]
    return "/skydns/" + "/".join(reversed(labels))


@dataclass(frozen=True)
class Registration:
    """One key the node wants in the store."""

    key: str
    value: str
    container: str


class Registrar:
    """Keeps this node's registrations in the store in line with its healthy containers."""

    def __init__(self, supervisor: Supervisor, settings: Settings) -> None:
        self.supervisor = supervisor
        self.settings = settings
        self.prefix = domain_path(settings.domain)
        self.loop = asyncio.new_event_loop()
        self.leases: dict[str, tuple[Any, Registration, float]] = {}
        self.client: aetcd.Client | None = None
        self._thread: threading.Thread | None = None
        self._stopping: threading.Event | None = None

    # -- what should be registered -------------------------------------------------------
    def desired(self) -> dict[str, Registration]:
        """Registrations for running, healthy containers with a service and a published port."""
        out: dict[str, Registration] = {}
        for cid in self.supervisor.ids():
            cdir = self.supervisor.resolve(cid)
            config = cdir.config()
            if not config.service or not config.ports:
                continue
            status = cdir.status()
            if status.state != "running" or status.health not in ("", "healthy"):
                continue
            if not self.supervisor.monitor_alive(cdir):
                continue
            port = config.ports[0].host_port
            host = self.settings.advertise
            key = f"{self.prefix}/{config.service}/{cid[:12]}"
            out[cid] = Registration(key, json.dumps({"host": host, "port": port}), cid)
        return out

    # -- the loop ------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> aetcd.Client:
        if self.client is None:
            # Imported here, not at the top: aetcd registers etcd's protobuf names, which
            # must not clash with another etcd binding loaded in the same process (tests).
            import aetcd  # noqa: PLC0415

            host, _, port = self.settings.etcd[0].rpartition(":")
            self.client = aetcd.Client(host=host or "127.0.0.1", port=int(port or 2379), timeout=5)
            await self.client.connect()
        return self.client

    async def sync(self, now: float) -> None:
        """One pass: register new, renew current, withdraw ended registrations."""
        client = await self._connect()
        want = self.desired()
        for cid in [c for c in self.leases if c not in want or want[c] != self.leases[c][1]]:
            lease, reg, _ = self.leases.pop(cid)
            await client.revoke_lease(lease.id)
            log.info("withdrew %s", reg.key)
        ttl = self.settings.lease_ttl
        for cid, reg in want.items():
            if cid not in self.leases:
                lease = await client.lease(ttl)
                await client.put(reg.key.encode(), reg.value.encode(), lease=lease)
                self.leases[cid] = (lease, reg, now)
                log.info("registered %s = %s", reg.key, reg.value)
            elif now - self.leases[cid][2] >= ttl / 3:
                lease = self.leases[cid][0]
                await client.refresh_lease(lease.id)
                self.leases[cid] = (lease, reg, now)

    async def withdraw_all(self) -> None:
        """Revoke every lease (the daemon stops cleanly)."""
        if self.client is None:
            return
        for lease, _, _ in self.leases.values():
            await self.client.revoke_lease(lease.id)
        self.leases.clear()
        await self.client.close()
        self.client = None

    async def _list(self) -> list[dict[str, Any]]:
        client = await self._connect()
        rows = []
        for kv in await client.get_prefix(self.prefix.encode() + b"/"):
            key = kv.key.decode()
            parts = key[len(self.prefix) + 1 :].split("/")
            try:
                value = json.loads(kv.value)
            except ValueError:
                value = {}
            rows.append(
                {
                    "key": key,
                    "service": parts[0],
                    "container": parts[-1],
                    "host": value.get("host", ""),
                    "port": value.get("port", 0),
                }
            )
        return rows

    def list(self) -> list[dict[str, Any]]:
        """Every registration under the domain (all nodes'), for ``keel services``."""
        return self._run(self._list())

    def start(self, stopping: threading.Event) -> None:
        """Run the loop in a thread until ``stopping`` is set."""
        self._stopping = stopping
        threading.Thread(target=self.loop.run_forever, name="etcd", daemon=True).start()

        def loop() -> None:
            while not stopping.wait(TICK):
                try:
                    self._run(self.sync(self.loop.time()))
                except Exception as exc:  # the store may be down: keep trying, say so once
                    log.warning("discovery: cannot reach the store: %s", exc)
                    self.leases.clear()
                    self.client = None

        self._thread = threading.Thread(target=loop, name="discovery", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the loop to end, withdraw registrations, close the connection."""
        if self._thread is not None:
            self._thread.join(10)
        try:
            self._run(self.withdraw_all())
        except Exception as exc:
            log.warning("discovery: could not withdraw registrations: %s", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
