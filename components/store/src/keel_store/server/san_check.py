"""etcd 3.4's check of a peer's client certificate SAN against the address it connects
from (``pkg/transport/listener_tls.go``: ``checkSAN``, ``checkCertSAN``, ``isHostInDNS``).

etcd runs it on every connection its peer listener accepts, unless
``--experimental-peer-skip-client-san-verification`` is given; its client listener does
not run it. The rule, for the leaf certificate the peer presented:

- no IP and no DNS SANs: accepted;
- the remote IP equals one of the IP SANs: accepted;
- otherwise, with DNS SANs: accepted if a name the remote IP reverse-resolves to (PTR)
  is one of them (or ends in the ``.rest`` of a ``*.rest`` one), or if one of the
  (non-wildcard) names resolves forward to the remote IP;
- otherwise refused with etcd's error text (Go's ``x509: certificate is valid for
  127.0.0.2, not 127.0.0.1`` when there are only IP SANs).

The IP comparison needs no lookup, so most connections are decided at once
(:func:`first_verdict`); lookups run off the event loop (:func:`dns_verdict`).
:func:`screen` applies the check to an accepted TLS transport.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from keel_store.server import tls

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Sans:
    """The IP and DNS SANs of a certificate, in the certificate's order."""

    ips: tuple[IPAddress, ...]
    dns_names: tuple[str, ...]

    @classmethod
    def of(cls, cert: x509.Certificate) -> Sans:
        """The SANs of ``cert`` (none if it has no SubjectAlternativeName extension)."""
        try:
            ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return cls((), ())
        return cls(
            tuple(ext.get_values_for_type(x509.IPAddress)),  # type: ignore[arg-type]
            tuple(ext.get_values_for_type(x509.DNSName)),
        )


LOOKUP = object()
""":func:`first_verdict`'s answer when only DNS lookups can decide."""


def _same_ip(host: str, ip: IPAddress) -> bool:
    """Go's ``net.IP.Equal``: an IPv4 address equals its IPv4-mapped IPv6 form."""
    try:
        remote = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False

    def plain(a: IPAddress) -> IPAddress:
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            return a.ipv4_mapped
        return a

    return plain(remote) == plain(ip)


def remote_host(peername: Any) -> str:
    """The remote address of a socket's ``peername`` as etcd writes it (an IPv4-mapped
    IPv6 address, from a dual-stack listener, as plain IPv4, as Go reports it)."""
    host = str(peername[0]) if isinstance(peername, tuple) else str(peername)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return host


def first_verdict(sans: Sans, host: str) -> str | object | None:
    """What the SANs say about a connection from ``host`` without any lookup: None
    (accepted), etcd's error text (refused), or :data:`LOOKUP` (DNS names decide)."""
    if not sans.ips and not sans.dns_names:
        return None
    if sans.ips:
        if any(_same_ip(host, ip) for ip in sans.ips):
            return None
        if not sans.dns_names:
            # Go's x509.HostnameError for an IP host
            valid = ", ".join(str(ip) for ip in sans.ips)
            return f"x509: certificate is valid for {valid}, not {host}"
    return LOOKUP


class Resolver(Protocol):
    """The two lookups etcd's ``isHostInDNS`` makes (OSError when one fails)."""

    def reverse(self, host: str) -> Awaitable[list[str]]:
        """Names the address ``host`` resolves to (PTR, or the hosts file)."""
        ...

    def forward(self, name: str) -> Awaitable[list[str]]:
        """Addresses (as text) the name resolves to."""
        ...


class SystemResolver:
    """The system resolver (hosts file, then DNS), off the event loop: the reverse
    lookup in the loop's default executor, the forward one with ``loop.getaddrinfo``."""

    async def reverse(self, host: str) -> list[str]:
        loop = asyncio.get_running_loop()
        name, aliases, _ = await loop.run_in_executor(None, socket.gethostbyaddr, host)
        return [name, *aliases]

    async def forward(self, name: str) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


default_resolver: Resolver = SystemResolver()
"""The resolver used when none is given (tests replace it to stay off the network)."""


def _lookup_error(what: str, exc: OSError) -> str:
    detail = exc.strerror or str(exc) or type(exc).__name__
    return f"lookup {what}: {detail}"


def _go_quote(text: str) -> str:
    """Go's ``%q`` of a string (enough for host names: backslash and quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def dns_verdict(sans: Sans, host: str, resolver: Resolver | None = None) -> str | None:
    """etcd's ``isHostInDNS`` for the DNS SANs: None if ``host`` is one of their hosts,
    else etcd's error text (with the last lookup error in parentheses, as etcd adds)."""
    resolver = resolver or default_resolver
    wildcards = [n[1:] for n in sans.dns_names if n.startswith("*.")]
    names = [n for n in sans.dns_names if not n.startswith("*.")]
    error: str | None = None
    try:
        for ptr in await resolver.reverse(host):
            found = ptr.removesuffix(".")  # a PTR record's trailing dot
            if found in names or any(found.endswith(w) for w in wildcards):
                return None
    except OSError as exc:
        error = _lookup_error(host, exc)
    for name in names:
        try:
            addresses = await resolver.forward(name)
        except OSError as exc:
            error = _lookup_error(name, exc)
            continue
        if host in addresses:
            return None
    listed = " ".join(_go_quote(n) for n in sans.dns_names)
    suffix = f" ({error})" if error else ""
    return f"tls: {_go_quote(host)} does not match any of DNSNames [{listed}]{suffix}"


async def check_cert_san(
    cert: x509.Certificate, host: str, resolver: Resolver | None = None
) -> str | None:
    """etcd's ``checkCertSAN``: None if ``cert`` may be presented from ``host``, else
    the error etcd logs for the refused connection."""
    sans = Sans.of(cert)
    verdict = first_verdict(sans, host)
    if verdict is LOOKUP:
        return await dns_verdict(sans, host, resolver)
    return verdict if isinstance(verdict, str) else None


_pending: set[asyncio.Task[None]] = set()
"""Checks waiting for lookups (kept referenced until they finish)."""


def wanted(ssl_object: Any) -> bool:
    """Whether the listener of this TLS connection checks client SANs (a
    :class:`keel_store.server.tls.PolicyContext` with ``check_client_san`` set)."""
    return bool(getattr(ssl_object.context, "check_client_san", False))


def screen(transport: Any) -> bool:
    """Run the SAN check on an accepted TLS ``transport`` if its context asks for it.

    Returns True if the connection was refused at once (logged and aborted, as
    :func:`keel_store.server.tls.refused` does). When DNS lookups must decide, reading is
    paused until they have: the connection is then resumed, or refused."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None or not wanted(ssl_object):
        return False
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return False  # no certificate asked for or given: nothing to check (as etcd)
    sans = Sans.of(x509.load_der_x509_certificate(der))
    host = remote_host(transport.get_extra_info("peername"))
    verdict = first_verdict(sans, host)
    if verdict is None:
        return False
    if isinstance(verdict, str):
        tls.reject(transport, "peer", verdict)
        return True
    transport.pause_reading()
    task = asyncio.get_running_loop().create_task(_after_lookup(transport, sans, host))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return False


async def _after_lookup(transport: Any, sans: Sans, host: str) -> None:
    reason = await dns_verdict(sans, host)
    if transport.is_closing():
        return
    if reason is None:
        transport.resume_reading()
        return
    tls.reject(transport, "peer", reason)
