"""Service discovery in the store, in the SkyDNS / CoreDNS ``etcd`` plugin layout.

A service instance ``web`` with id ``a1`` in domain ``prod.keel.local`` lives at::

    /skydns/local/keel/prod/web/a1  ->  {"host": "10.0.0.5", "port": 8080, ...}

(domain labels reversed, then the service name, then the instance id), with the JSON
fields of CoreDNS's ``msg.Service``: host, port, priority, weight, text, ttl, ... So a
stock CoreDNS with ``etcd keel.local { path /skydns }`` answers ``SRV
web.prod.keel.local`` from what Keel registers. Registrations are bound to a lease: an
instance whose supervisor stops renewing it disappears by itself.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from keel_store.client import Client

ROOT = "/skydns"


class RecordError(ValueError):
    """A malformed service record or name; the message says which field."""


@dataclass(frozen=True)
class ServiceRecord:
    """CoreDNS ``msg.Service`` fields (zero values are left out of the JSON)."""

    host: str
    port: int = 0
    priority: int = 10
    weight: int = 0
    text: str = ""
    ttl: int = 0
    group: str = ""

    def to_json(self) -> bytes:
        fields = {k: v for k, v in asdict(self).items() if v not in ("", 0) or k == "host"}
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = "") -> ServiceRecord:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise RecordError(f"{where}: not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("host"), str):
            raise RecordError(f"{where}: a service record needs a string 'host'")
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**known)


def service_key(name: str, domain: str, instance: str = "") -> str:
    """``web``, ``prod.keel.local``, ``a1`` -> ``/skydns/local/keel/prod/web/a1``."""
    labels = [label for label in domain.strip(".").split(".") if label]
    for part, what in ((name, "name"), (instance, "instance")):
        if "/" in part or "." in part:
            raise RecordError(f"service {what} {part!r}: no '/' or '.' allowed")
    if not name:
        raise RecordError("service name: empty")
    parts = [ROOT, *reversed(labels), name]
    if instance:
        parts.append(instance)
    return "/".join(parts)


@dataclass
class Registration:
    """A live registration; :meth:`close` removes it (or let its lease lapse)."""

    client: Client
    key: str
    lease_id: int
    _stop: threading.Event = field(repr=False)

    def close(self) -> None:
        self._stop.set()
        self.client.lease_revoke(self.lease_id)


def register(
    client: Client, name: str, domain: str, instance: str, record: ServiceRecord, *, ttl: int = 10
) -> Registration:
    """Publish ``record`` under a lease of ``ttl`` seconds, renewed in the background."""
    lease = client.lease_grant(ttl)
    key = service_key(name, domain, instance)
    client.put(key, record.to_json(), lease=lease.id)
    stop = client.keep_alive_forever(lease.id, max(0.5, lease.ttl / 3))
    return Registration(client, key, lease.id, stop)


def lookup(client: Client, name: str, domain: str) -> dict[str, ServiceRecord]:
    """Every instance of ``name`` (as CoreDNS does: a prefix get, linearizable)."""
    prefix = service_key(name, domain) + "/"
    out: dict[str, ServiceRecord] = {}
    for kv in client.get(prefix, prefix=True):
        key = kv.key.decode()
        out[key.removeprefix(prefix)] = ServiceRecord.from_json(kv.value, key)
    return out


def describe(records: dict[str, ServiceRecord]) -> list[dict[str, Any]]:
    """Plain dicts, for printing."""
    return [{"instance": k, **asdict(v)} for k, v in sorted(records.items())]
