"""Which handler a request reaches on etcd's client port, and the mux's own answers.

etcd 3.4 (embed/serve.go) rewrites ``/v3beta/`` to ``/v3/``, then hands the request to
a Go ``http.ServeMux`` with two entries: ``/v3/`` (grpc-gateway's mux) and ``/`` (its
``/health``, ``/version``, ``/metrics``, ``/debug/vars``). :func:`resolve` follows both:

* Go's ``ServeMux`` answers 301 to a path that is not clean (``//``, ``/./``, ``/../``)
  and to ``/v3`` (a subtree registered as ``/v3/``), keeping the query.
* grpc-gateway matches the decoded path exactly (no trailing slash, no ``:verb``); a
  path it knows with another method than POST is 405 ``Method Not Allowed``, one it
  does not know 404 ``Not Found``, both as Go's ``http.Error`` (plain text).
* ``/health``, ``/version`` and ``/debug/vars`` answer only GET (405 with ``Allow:
  GET``); any other path is Go's ``404 page not found``.

The query string is not looked at.
"""

from __future__ import annotations

import dataclasses
import html
import posixpath
import urllib.parse
from collections.abc import Container

PLAIN = "text/plain; charset=utf-8"
NOSNIFF = b"X-Content-Type-Options: nosniff\r\n"


@dataclasses.dataclass(frozen=True)
class Answer:
    """A fixed answer: status, body, Content-Type (None: none), more header lines."""

    status: int
    body: bytes
    content_type: str | None = PLAIN
    headers: bytes = NOSNIFF


@dataclasses.dataclass(frozen=True)
class Call:
    """A gateway call: ``name`` is the route under ``/v3/`` (``kv/range``)."""

    name: str
    stream: bool


@dataclasses.dataclass(frozen=True)
class Page:
    """One of the ``/`` handler's pages: ``health``, ``version``, ``metrics`` or ``vars``
    (``/debug/vars``)."""

    name: str


Target = Answer | Call | Page

GET_PAGES = {"/health": "health", "/version": "version", "/debug/vars": "vars"}
"""The ``/`` handler's pages that answer only GET, by path (``/metrics`` takes any
method, as Prometheus's handler)."""

NOT_FOUND = Answer(404, b"Not Found\n")
"""grpc-gateway's answer for a path it does not know."""
METHOD_NOT_ALLOWED = Answer(405, b"Method Not Allowed\n")
PAGE_NOT_FOUND = Answer(404, b"404 page not found\n")
"""Go's http.NotFound, for a path outside /v3/."""


def clean_path(path: str) -> str:
    """Go's ``cleanPath`` (net/http): ``path.Clean``, keeping a trailing slash."""
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def redirect(method: str, path: str, query: str) -> Answer:
    """Go's ``http.Redirect`` with 301 (a body only for GET and HEAD)."""
    location = urllib.parse.quote(path, safe="/:@!$&'()*+,;=-._~") + (f"?{query}" if query else "")
    headers = f"Location: {location}\r\n".encode("latin-1")
    if method in ("GET", "HEAD"):
        body = f'<a href="{html.escape(location)}">Moved Permanently</a>.\n\n'.encode()
        return Answer(301, body, "text/html; charset=utf-8", headers)
    return Answer(301, b"", None, headers)


def resolve(
    method: str,
    target: str,
    *,
    json_api: bool,
    unary: Container[str],
    streams: Container[str],
    pages: Container[str] = ("health", "version", "metrics", "vars"),
) -> Target:
    """Where ``method target`` goes (``json_api``: ``--enable-grpc-gateway``; ``pages``:
    the ``/`` handler's pages served, on ``--listen-metrics-urls`` only ``metrics`` and
    ``health``, as etcd's ``HandleMetricsHealth``)."""
    raw, _, query = target.partition("?")
    path = urllib.parse.unquote(raw)
    if path.startswith("/v3beta/"):
        path = "/v3/" + path[len("/v3beta/") :]
    if method != "CONNECT":
        cleaned = clean_path(path)
        if cleaned != path:
            return redirect(method, cleaned, query)
    if json_api and path == "/v3":
        return redirect(method, "/v3/", query)
    if json_api and path.startswith("/v3/"):
        name = path[len("/v3/") :]
        if ":" in name.rpartition("/")[2]:
            return NOT_FOUND  # a ":verb": no route of etcd's has one
        stream = name in streams
        if not stream and name not in unary:
            return NOT_FOUND
        return Call(name, stream) if method == "POST" else METHOD_NOT_ALLOWED
    if path == "/metrics" and "metrics" in pages:
        return Page("metrics")
    page = GET_PAGES.get(path)
    if page is not None and page in pages:
        if method != "GET":
            return Answer(405, b"Method Not Allowed\n", PLAIN, b"Allow: GET\r\n" + NOSNIFF)
        return Page(page)
    return PAGE_NOT_FOUND
