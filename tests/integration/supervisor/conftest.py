"""Fixtures for the supervisor's integration tests: a real registry, started and stopped here.

Debian's docker-registry on 127.0.0.1 with storage in a temporary directory; auth is ``None``
(open), ``"htpasswd"`` (basic auth, bcrypt file made with ``htpasswd -B``) or ``"token"`` (the
registry's ``auth: token`` backed by :class:`TokenServer`, which signs RS256 JWTs with a throw-away
key whose self-signed certificate is the registry's ``rootcertbundle``; tokens carry that
certificate in their ``x5c`` header, which is how the registry finds the signing key).
Images get in with ``skopeo copy oci:... docker://...``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from keel_core.testing import free_port

USER, PASSWORD = "keel", "s3cret-test"
SERVICE, ISSUER = "keel-test-registry", "keel-test-issuer"


def self_signed(key: Path, cert: Path, subject: str, alt_name: str | None = None) -> None:
    """A throwaway self-signed RSA certificate and key, valid for a day."""
    extra = ["-addext", alt_name] if alt_name else []
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", subject, *extra, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Issues registry tokens to ``USER``/``PASSWORD`` (basic auth), refuses everyone else."""

    directory: Path
    issued: list[str] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        self.key = self.directory / "token.key"
        self.cert = self.directory / "token.crt"
        self_signed(self.key, self.cert, "/CN=keel-test-token-issuer")
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    server.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    self.wfile.write(b'{"details":"bad credentials"}')
                    return
                token = server.sign(query.get("scope", []))
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/token"

    def sign(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else ("", "", "")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        token = f"{signing_input}.{b64url(signature)}"
        self.issued.append(",".join(scopes))
        return token

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@dataclass
class Registry:
    """A running docker-registry; ``host`` is ``127.0.0.1:PORT``."""

    process: subprocess.Popen[bytes]
    host: str
    storage: Path
    log: Path
    tokens: TokenServer | None = None
    tls: bool = False

    @classmethod
    def start(cls, directory: Path, auth: str | None = None, *, tls: bool = False) -> Registry:
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        storage = directory / "storage"
        lines = [
            "version: 0.1",
            "log: {level: warn}",
            "storage:",
            f"  filesystem: {{rootdirectory: {storage}}}",
            "  delete: {enabled: true}",
            f"http: {{addr: '127.0.0.1:{port}'}}",
        ]
        if tls:  # a self-signed certificate for 127.0.0.1; clients trust it via SSL_CERT_FILE
            cert, key = directory / "tls.crt", directory / "tls.key"
            self_signed(key, cert, "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1")
            lines[-1] = (
                f"http: {{addr: '127.0.0.1:{port}', tls: {{certificate: {cert}, key: {key}}}}}"
            )
        tokens = None
        if auth == "htpasswd":
            entry = subprocess.run(
                ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
            ).stdout.strip()
            (directory / "htpasswd").write_text(entry + "\n")
            lines += ["auth:", f"  htpasswd: {{realm: keel-test, path: {directory / 'htpasswd'}}}"]
        elif auth == "token":
            tokens = TokenServer(directory)
            lines += [
                "auth:",
                "  token:",
                f"    realm: {tokens.realm}",
                f"    service: {SERVICE}",
                f"    issuer: {ISSUER}",
                f"    rootcertbundle: {tokens.cert}",
            ]
        config = directory / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        log = directory / "registry.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        registry = cls(process, f"127.0.0.1:{port}", storage, log, tokens, tls)
        registry.wait_ready()
        return registry

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()}")
            try:
                scheme = "https" if self.tls else "http"
                context = ssl._create_unverified_context() if self.tls else None
                urllib.request.urlopen(
                    f"{scheme}://{self.host}/v2/", timeout=1, context=context
                ).close()
                return
            except urllib.error.HTTPError:
                return  # 401: up, wants auth
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry not ready after {timeout}s: {self.log.read_text()}")

    def push(self, layout: Path, tag: str, name: str, *, all_platforms: bool = False) -> str:
        """``skopeo copy oci:layout:tag docker://host/name``; returns ``host/name``."""
        policy = layout.parent / "policy.json"
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        cmd = ["skopeo", "--policy", str(policy), "copy", "--dest-tls-verify=false"]
        if self.tokens is not None or (self.storage.parent / "htpasswd").exists():
            cmd.append(f"--dest-creds={USER}:{PASSWORD}")
        if all_platforms:
            cmd.append("--all")
        target = f"{self.host}/{name}"
        cmd += [f"oci:{layout}:{tag}", f"docker://{target}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        return target

    @property
    def creds(self) -> tuple[str, str]:
        """The one account the registry (or its token server) accepts."""
        return USER, PASSWORD

    def blob_file(self, digest: str) -> Path:
        hexpart = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.tokens is not None:
            self.tokens.stop()


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a registry that breaks off the next ``cuts``
    responses longer than ``after`` bytes (a blob transfer that dies half-way)."""

    def __init__(self, upstream: str, *, cuts: int = 1, after: int = 64 * 1024) -> None:
        self.upstream = upstream
        self.cuts = cuts
        self.after = after
        self.cut = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, client: socket.socket) -> None:
        host, port = self.upstream.rsplit(":", 1)
        with client, socket.create_connection((host, int(port))) as upstream:
            up = threading.Thread(target=self._pipe, args=(client, upstream), daemon=True)
            up.start()
            sent = 0
            while data := upstream.recv(16384):
                if sent + len(data) > self.after:
                    with self.lock:
                        cut, self.cuts = self.cuts > 0, self.cuts - 1 if self.cuts > 0 else 0
                        self.cut += cut
                    if cut:
                        client.sendall(data[: self.after - sent])
                        client.shutdown(socket.SHUT_RDWR)
                        return
                client.sendall(data)
                sent += len(data)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(16384):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # the client is done: let the registry close too
        except OSError:
            pass

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.server.close()
        self.accepting.join(5)
        for thread in self.threads:
            thread.join(5)


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"host tests need {', '.join(missing)}: run ./dev (system-packages.txt)")


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need("docker-registry", "skopeo")
    registry = Registry.start(tmp_path_factory.mktemp("registry-open"))
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need("docker-registry", "skopeo", "openssl")
    registry = Registry.start(tmp_path_factory.mktemp("registry-tls"), tls=True)
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need("docker-registry", "skopeo", "htpasswd")
    registry = Registry.start(tmp_path_factory.mktemp("registry-basic"), auth="htpasswd")
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need("docker-registry", "skopeo", "openssl")
    registry = Registry.start(tmp_path_factory.mktemp("registry-token"), auth="token")
    yield registry
    registry.stop()


@pytest.fixture
def cutting_proxy(open_registry: Registry) -> Iterator[CuttingProxy]:
    """A proxy to ``open_registry`` that breaks off the next long response."""
    proxy = CuttingProxy(open_registry.host, cuts=1)
    yield proxy
    proxy.close()
