"""etcd's ``--discovery``: bootstrap a cluster through a discovery service.

The service is an etcd v2 key space (discovery.etcd.io, or a private etcd with
``--enable-v2``) holding, under the discovery URL's path, the expected cluster size in
``_config/size`` and one key per member that registered: the member's ID in hex, its
value ``name=peer-url,...``. A new member (one with no WAL yet) registers itself
(create-only: a second registration of the same ID is refused), waits until ``size``
members have registered, and bootstraps with the first ``size`` registrations, in the
order they were made, as its initial cluster. A member registered beyond the size is
refused ("discovery: cluster is full"; etcd 3.4 would then become a v2 proxy, which
keel-store does not have). The protocol and its errors are etcd 3.4's
(``etcdserver/api/v2discovery``): a discovery service that cannot be reached is retried
with exponential backoff (1 s doubling to 256 s) for as long as it takes.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger("keel_store.discovery")

REQUEST_TIMEOUT = 5.0
"""etcd's ``client.DefaultRequestTimeout`` for one request to the service."""

MAX_BACKOFF_DOUBLINGS = 8
"""etcd's ``maxExpoentialRetries``: waits of 1, 2, 4 ... 256 s between attempts."""


class DiscoveryError(Exception):
    """Discovery failed; the message is etcd's ("discovery: cluster is full" ...)."""


ErrSizeNotFound = "discovery: size key not found"
ErrBadSizeKey = "discovery: size key is bad"
ErrDuplicateID = "discovery: found duplicate id"
ErrDuplicateName = "discovery: found duplicate name"
ErrFullCluster = "discovery: cluster is full"
ErrBadDiscoveryEndpoint = "discovery: bad discovery endpoint"
ErrInvalidURL = "discovery: invalid URL"


class _Unreachable(Exception):
    """The service did not answer (connection refused, timeout, 5xx): retry."""


class Discovery:
    """One member's conversation with the discovery service at ``url``."""

    def __init__(
        self,
        url: str,
        member_id: int,
        proxy: str = "",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DiscoveryError(ErrInvalidURL)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.cluster = "/" + parts.path.strip("/")
        self.self_key = f"{self.cluster}/{member_id:x}"
        handlers: list[Any] = []
        if proxy:
            handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
        else:
            handlers.append(urllib.request.ProxyHandler({}))  # not the environment's
        self._opener = urllib.request.build_opener(*handlers)
        self._sleep = sleep
        self._retries = 0

    # ------------------------------------------------------------------ requests

    def _request(
        self, method: str, path: str, query: dict[str, str] | None = None,
        form: dict[str, str] | None = None, timeout: float | None = REQUEST_TIMEOUT,
    ) -> tuple[int, dict[str, Any], int]:  # fmt: skip
        """(HTTP status, JSON body, X-Etcd-Index); raises _Unreachable to retry."""
        url = self.base + urllib.parse.quote(path)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                status, raw, headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise _Unreachable(f"{exc.code} from {url}") from None
            status, raw, headers = exc.code, exc.read(), exc.headers
        except (OSError, TimeoutError) as exc:
            raise _Unreachable(f"{url}: {exc}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise DiscoveryError(ErrBadDiscoveryEndpoint) from None
        if not isinstance(body, dict):
            raise DiscoveryError(ErrBadDiscoveryEndpoint)
        index = int(headers.get("X-Etcd-Index", "0") or 0)
        return status, body, index

    def _backoff(self, step: str, why: str) -> None:
        wait = float(1 << min(self._retries, MAX_BACKOFF_DOUBLINGS))
        self._retries += 1
        log.warning(
            "retry connecting to discovery service",
            extra={"step": step, "url": self.base + self.cluster, "error": why, "backoff": wait},
        )
        self._sleep(wait)

    # ------------------------------------------------------------------ protocol

    def check_cluster(self) -> tuple[list[dict[str, Any]], int, int]:
        """(registrations in order, expected size, service index); raises
        DiscoveryError(ErrFullCluster) when this member is not among the first size."""
        while True:
            try:
                status, body, _ = self._request("GET", f"{self.cluster}/_config/size")
                if status == 404:
                    raise DiscoveryError(ErrSizeNotFound)
                try:
                    size = int(body["node"]["value"])
                except (KeyError, TypeError, ValueError):
                    raise DiscoveryError(ErrBadSizeKey) from None
                if size <= 0:
                    raise DiscoveryError(ErrBadSizeKey)
                status, body, index = self._request("GET", self.cluster)
                break
            except _Unreachable as exc:
                self._backoff("checking the cluster", str(exc))
        nodes = [
            n
            for n in body.get("node", {}).get("nodes", []) or []
            if n.get("key", "").rsplit("/", 1)[-1] != "_config"
        ]
        nodes.sort(key=lambda n: int(n.get("createdIndex", 0)))
        mine = self.self_key.rsplit("/", 1)[-1]
        for i, node in enumerate(nodes):
            if node.get("key", "").rsplit("/", 1)[-1] == mine:
                break
            if i >= size - 1:
                raise DiscoveryError(ErrFullCluster)
        return nodes, size, index

    def create_self(self, config: str) -> None:
        while True:
            try:
                status, _, _ = self._request(
                    "PUT", self.self_key, {"prevExist": "false"}, {"value": config}
                )
                break
            except _Unreachable as exc:
                self._backoff("registering", str(exc))
        if status == 412:
            raise DiscoveryError(ErrDuplicateID)
        if status not in (200, 201):
            raise DiscoveryError(f"discovery: registering failed with HTTP {status}")

    def wait_nodes(
        self, nodes: list[dict[str, Any]], size: int, index: int
    ) -> list[dict[str, Any]]:
        """Watch the service until ``size`` members registered; the first ``size``."""
        found = {n["key"]: n for n in nodes[:size]}
        while len(found) < size:
            log.info("found %d peer(s), waiting for %d more", len(found), size - len(found))
            try:
                status, body, _ = self._request(
                    "GET",
                    self.cluster,
                    {"wait": "true", "recursive": "true", "waitIndex": str(index + 1)},
                    timeout=None,  # a watch waits as long as the others take
                )
            except _Unreachable as exc:
                self._backoff("waiting for other nodes", str(exc))
                nodes, size, index = self.check_cluster()
                found = {n["key"]: n for n in nodes[:size]}
                continue
            if status == 400 and body.get("errorCode") == 401:  # the index was cleared
                nodes, size, index = self.check_cluster()
                found = {n["key"]: n for n in nodes[:size]}
                continue
            node = body.get("node", {})
            index = int(node.get("modifiedIndex", index + 1))
            key = node.get("key", "")
            if body.get("action") in ("set", "create") and not key.endswith("/_config"):
                found.setdefault(key, node)
        ordered = sorted(found.values(), key=lambda n: int(n.get("createdIndex", 0)))
        return ordered[:size]

    def join_cluster(self, config: str) -> str:
        """Register ``config`` (``name=peer-url,...``) and return the initial cluster."""
        self.check_cluster()  # a full cluster is refused before registering
        self.create_self(config)
        nodes, size, index = self.check_cluster()
        return nodes_to_cluster(self.wait_nodes(nodes, size, index), size)


def nodes_to_cluster(nodes: list[dict[str, Any]], size: int) -> str:
    """The registrations as an ``--initial-cluster`` value (etcd's nodesToCluster)."""
    values = [str(n.get("value", "")) for n in nodes]
    names: set[str] = set()
    for value in values:
        for item in value.split(","):
            name, sep, url = item.partition("=")
            if not sep or not urllib.parse.urlsplit(url).scheme:
                raise DiscoveryError(ErrInvalidURL)
            names.add(name)
    if len(names) != size:
        raise DiscoveryError(ErrDuplicateName)
    return ",".join(values)


def join_cluster(url: str, member_id: int, config: str, proxy: str = "") -> str:
    """etcd's ``v2discovery.JoinCluster``: the initial cluster, or DiscoveryError."""
    return Discovery(url, member_id, proxy).join_cluster(config)
