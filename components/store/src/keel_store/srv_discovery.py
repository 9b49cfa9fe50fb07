"""etcd's ``--discovery-srv``: the initial cluster from DNS SRV records.

A new member (one with no WAL yet) asks DNS for ``_etcd-server-ssl._tcp.<domain>``
(members reached over ``https``) and ``_etcd-server._tcp.<domain>`` (``http``); with
``--discovery-srv-name=NAME`` the services are ``_etcd-server-ssl-NAME._tcp`` and
``_etcd-server-NAME._tcp``. Each record's target and port is a member's peer URL
(``https://<target>:<port>``, the target without its trailing dot). A record whose
target resolves to the same address and port as one of the member's own
``--initial-advertise-peer-urls`` is the member itself and gets its ``--name``; the
others get temporary names ``0``, ``1`` ... (each member later announces its real
name). The member must be among the records: "cannot find local etcd member ... in
SRV records". The errors are etcd 3.4's (``pkg/srv.GetCluster``,
``embed.Config.PeerURLsMapAndToken``), with Go's resolver texts ("lookup
_etcd-server-ssl._tcp.example.com on 127.0.0.1:53: no such host").

As etcd's resolver does, lookups use the system's configuration: ``/etc/resolv.conf``
for the SRV queries (dnspython), and the system's host lookup (``/etc/hosts``, then
DNS) for the targets and the member's own URLs.

One difference from etcd 3.4.23: etcd 3.4 keeps the ``_etcd-server`` (http) records
only when their lookup *fails* (an inverted check, fixed in etcd 3.5), so plain-http
SRV discovery never works there ("no such host" for the ssl service). keel-store uses
the records of both services, as etcd documents and as etcd 3.5 does; when neither
lookup finds a member, the error is etcd 3.4's (the ssl lookup's).
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.parse
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import dns.resolver

log = logging.getLogger("keel_store.discovery")


class SrvDiscoveryError(Exception):
    """DNS discovery failed; the message is etcd's."""


class DnsLookupError(Exception):
    """One lookup failed; the message is Go's (``lookup NAME on SERVER: no such host``)."""


class Resolver(Protocol):
    """The two lookups SRV discovery needs (Go's ``net.LookupSRV`` and ``ResolveTCPAddr``)."""

    def lookup_srv(self, name: str) -> list[tuple[str, int]]:
        """(target, port) of the SRV records of ``name``, in RFC 2782 order (priority,
        then weighted random); the targets keep their trailing dot. Raises
        DnsLookupError when there are none."""
        ...

    def resolve_tcp_addr(self, host: str, port: int) -> str:
        """``ip:port`` (``[ip]:port`` for IPv6) of ``host``, an IPv4 address first if it
        has one, as Go's ``ResolveTCPAddr("tcp", ...)`` prints it. Raises DnsLookupError."""
        ...


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SystemResolver:
    """:class:`Resolver` over the system's configuration: dnspython reading
    ``/etc/resolv.conf`` for SRV (nameservers, search list, ndots, timeouts), the C
    library's host lookup for addresses."""

    def __init__(self) -> None:
        # dnspython is imported here, not with the module: it costs ~190 ms of start-up
        # that a member not using --discovery-srv should not pay.
        import dns.resolver  # noqa: PLC0415

        self._dns: dns.resolver.Resolver
        try:
            self._dns = dns.resolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration:
            # Go's default when resolv.conf is missing or names no server.
            self._dns = dns.resolver.Resolver(configure=False)
            self._dns.nameservers = ["127.0.0.1", "::1"]

    def _server(self) -> str:
        servers = [str(s) for s in self._dns.nameservers] or ["127.0.0.1"]
        return _join(servers[0], self._dns.port)

    def lookup_srv(self, name: str) -> list[tuple[str, int]]:
        import dns.exception  # noqa: PLC0415
        import dns.rdatatype  # noqa: PLC0415
        import dns.resolver  # noqa: PLC0415
        from dns.rdtypes.IN.SRV import SRV  # noqa: PLC0415

        why = "no such host"
        try:
            answer = self._dns.resolve(name, dns.rdatatype.SRV, search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            answer = None
        except dns.resolver.LifetimeTimeout:
            answer, why = None, "i/o timeout"
        except (dns.resolver.NoNameservers, dns.exception.DNSException):
            answer, why = None, "server misbehaving"
        if answer is None or answer.rrset is None or not len(answer.rrset):
            raise DnsLookupError(f"lookup {name} on {self._server()}: {why}")
        records = answer.rrset.processing_order()  # RFC 2782, as Go's byPriorityWeight
        return [(r.target.to_text(), int(r.port)) for r in records if isinstance(r, SRV)]

    def resolve_tcp_addr(self, host: str, port: int) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                raise DnsLookupError(f"lookup {host} on {self._server()}: no such host") from None
            raise DnsLookupError(f"lookup {host}: {exc.strerror}") from None
        ipv4 = [i for i in infos if i[0] == socket.AF_INET]
        address = str((ipv4 or infos)[0][4][0])
        return _join(address, port)


def service_name(service: str, suffix: str) -> str:
    """``etcd-server-ssl`` + ``--discovery-srv-name`` as etcd names the SRV service."""
    return f"{service}-{suffix}" if suffix else service


def get_cluster(
    resolver: Resolver,
    scheme: str,
    service: str,
    *,
    name: str,
    domain: str,
    advertise_peer_urls: list[str],
    temp_names: list[int],
) -> list[str]:
    """etcd's ``srv.GetCluster``: ``name=scheme://target:port`` for each record of
    ``_service._tcp.domain``; ``temp_names`` is the next temporary name (shared by
    the lookups of one member, so the ssl and plain lists do not reuse a name)."""
    own: dict[str, str] = {}
    for url in advertise_peer_urls:
        parts = urllib.parse.urlsplit(url)
        if parts.port is None or parts.hostname is None:
            raise DnsLookupError(f"address {parts.netloc}: missing port in address")
        own[resolver.resolve_tcp_addr(parts.hostname, parts.port)] = url
    found: list[str] = []
    last_error = ""
    try:
        records = resolver.lookup_srv(f"_{service}._tcp.{domain}")
    except DnsLookupError as exc:
        raise DnsLookupError(f"error querying DNS SRV records for _{service} {exc}") from None
    for target, port in records:
        try:
            address = resolver.resolve_tcp_addr(target, port)
        except DnsLookupError as exc:
            last_error = str(exc)
            continue
        url_host = _join(target.removesuffix("."), port)
        mine = own.get(address)
        if mine is not None and urllib.parse.urlsplit(mine).scheme != scheme:
            last_error = (
                f"bootstrap at {scheme}://{url_host} from DNS for {service} has scheme"
                f" mismatch with expected peer {mine}"
            )
            continue
        if mine is not None:
            member = name
        else:
            member = str(temp_names[0])
            temp_names[0] += 1
        found.append(f"{member}={scheme}://{url_host}")
    if not found:
        raise DnsLookupError(f"error querying DNS SRV records for _{service} {last_error}")
    return found


def initial_cluster(
    domain: str,
    service_suffix: str,
    name: str,
    advertise_peer_urls: list[str],
    resolver: Resolver | None = None,
) -> str:
    """The ``--initial-cluster`` value for member ``name`` from the SRV records of
    ``domain`` (etcd's ``GetDNSClusterNames`` and the "dns" case of
    ``PeerURLsMapAndToken``); raises SrvDiscoveryError with etcd's message."""
    resolver = resolver or SystemResolver()
    counter = [0]
    found: list[str] = []
    errors: list[str] = []
    for scheme, service in (("https", "etcd-server-ssl"), ("http", "etcd-server")):
        full = service_name(service, service_suffix)
        try:
            got = get_cluster(
                resolver,
                scheme,
                full,
                name=name,
                domain=domain,
                advertise_peer_urls=advertise_peer_urls,
                temp_names=counter,
            )
        except DnsLookupError as exc:
            got = []
            errors.append(str(exc))
        log.info(
            "get cluster for %s SRV",
            service,
            extra={"service-scheme": scheme, "service-name": full, "server-name": name,
                   "discovery-srv": domain, "found-cluster": got,
                   "error": errors[-1] if errors and not got else None},
        )  # fmt: skip
        found += got
    if not found:
        log.warning("failed to resolve during SRV discovery", extra={"error": errors[0]})
        raise SrvDiscoveryError(errors[0])
    for node in found:
        log.info("got bootstrap from DNS for etcd-server", extra={"node": node})
    if not any(entry.split("=", 1)[0] == name for entry in found):
        raise SrvDiscoveryError(f"cannot find local etcd member {json.dumps(name)} in SRV records")
    return ",".join(found)
