"""The supervisor's API: JSON over HTTP/1.1 on a unix socket, and its client.

Only root (or who may open the socket) talks to it, as with docker's socket. Requests
and answers are small JSON documents; ``logs?follow=1`` streams one JSON object per
line until the client hangs up. Every failure the user can fix comes back as
``{"error": "..."}`` with status 400 (bad request) or 404 (no such thing), and the client
raises it as a :class:`~keel_supervisor.model.SupervisorError` with the same words.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from keel_core.errors import KeelError
from keel_supervisor.errors import SupervisorError

Handler = Callable[..., Any]
"""A route: called with the path's groups, ``query`` (dict) and ``body`` (JSON or None)."""


class Stream:
    """A route's answer that is sent line by line (``logs -f``)."""

    def __init__(self, lines: Iterator[dict[str, Any]]) -> None:
        self.lines = lines


class NotFound(SupervisorError):
    """The thing named in the request does not exist (HTTP 404)."""


class Router:
    """Maps ``METHOD /path/{name}`` patterns to handlers."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` and ``pattern`` (``{x}`` matches one segment)."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self.routes.append((method, re.compile(f"^{regex}$"), handler))

    def find(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The handler and path parameters for a request, if any route matches."""
        for verb, regex, handler in self.routes:
            match = regex.match(path)
            if match and verb == method:
                return handler, match.groupdict()
        return None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: UnixServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet by default: the daemon logs what it does, not every request."""

    def address_string(self) -> str:
        """Unix sockets have no peer address."""
        return "unix"

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        found = self.server.router.find(method, url.path)
        if found is None:
            self._send(404, {"error": f"no API route {method} {url.path}"})
            return
        handler, params = found
        try:
            result = handler(**params, query=query, body=body)
        except NotFound as exc:
            self._send(404, {"error": str(exc)})
            return
        except KeelError as exc:
            self._send(400, {"error": str(exc)})
            return
        except (ValueError, TypeError) as exc:
            self._send(400, {"error": f"bad request: {exc}"})
            return
        if isinstance(result, Stream):
            self._stream(result)
        else:
            self._send(200, result)

    def _send(self, status: int, data: Any) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, stream: Stream) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for item in stream.lines:
                self.wfile.write(json.dumps(item).encode() + b"\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped following

    def do_GET(self) -> None:
        """Read requests."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Actions."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        """Removals."""
        self._dispatch("DELETE")


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An HTTP server on a unix socket, one thread per connection."""

    daemon_threads = True

    def __init__(self, path: Path, router: Router) -> None:
        self.router = router
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a supervisor that crashed
            else:
                probe.close()
                raise SupervisorError(f"another supervisor already listens on {path}")
        super().__init__(str(path), _RequestHandler)
        os.chmod(path, 0o660)

    def serve_in_thread(self) -> threading.Thread:
        """Serve until :meth:`shutdown`, in a background thread."""
        thread = threading.Thread(target=self.serve_forever, name="api", daemon=True)
        thread.start()
        return thread


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Client:
    """Talks to a supervisor daemon over its socket."""

    def __init__(self, path: Path, timeout: float | None = 300.0) -> None:
        self.path = path
        self.timeout = timeout

    def _open(self, method: str, url: str, body: Any, timeout: float | None) -> Any:
        conn = _UnixConnection(str(self.path), timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        try:
            conn.request(method, url, body=payload, headers=headers)
            return conn, conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            raise SupervisorError(
                f"no supervisor is listening on {self.path}: start it with `keel container daemon`"
                " (or the keel-supervisor service)"
            ) from None

    def request(self, method: str, url: str, body: Any = None) -> Any:
        """Send one request; returns the decoded JSON answer or raises its error."""
        conn, response = self._open(method, url, body, self.timeout)
        try:
            data = json.loads(response.read() or b"null")
        finally:
            conn.close()
        if response.status >= 400:
            raise SupervisorError(data.get("error", f"HTTP {response.status}"))
        return data

    def stream(self, url: str) -> Iterator[Any]:
        """Decoded JSON lines of a streaming answer, as they arrive."""
        conn, response = self._open("GET", url, None, None)
        try:
            if response.status >= 400:
                raise SupervisorError(json.loads(response.read()).get("error", "error"))
            for raw in response:
                yield json.loads(raw)
        finally:
            conn.close()


def q(text: str) -> str:
    """Quote one path segment."""
    return quote(text, safe="")
