"""Real keel-store (and etcd) processes on loopback for the host tests.

Every process gets free 127.0.0.1 ports and its own temporary data directory, and is
killed by PID when the test ends; nothing survives a test run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keel_core.testing import free_port

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@dataclass
class Proc:
    """One server member: how to start it again, and its process."""

    name: str
    argv: list[str]
    client_url: str
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return self.client_url.removeprefix("http://").removeprefix("https://")

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def etcdctl(
    endpoints: str, *args: str, input: str | None = None, timeout: float = 20, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run Debian's etcdctl (v3 API) against ``endpoints``."""
    result = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoints}", "--dial-timeout=3s", "--command-timeout=10s", *args],
        check=False,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"etcdctl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )
    return result


class TLSFiles:
    """A throwaway CA with a server/peer certificate for 127.0.0.1 and a client one."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca, self.ca_key = directory / "ca.crt", directory / "ca.key"
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=keel-test-ca",
            "-keyout",
            str(self.ca_key),
            "-out",
            str(self.ca),
        )
        self.cert, self.key = self.issue("server", "subjectAltName=IP:127.0.0.1")
        self.client_cert, self.client_key = self.issue("client", "extendedKeyUsage=clientAuth")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    def issue(self, name: str, ext: str) -> tuple[Path, Path]:
        """A certificate and key signed by the CA, CN ``name``, with ``ext`` (openssl
        extension lines, newline separated)."""
        key, csr, crt = (self.dir / f"{name}.{s}" for s in ("key", "csr", "crt"))
        extfile = self.dir / f"{name}.ext"
        extfile.write_text(ext + "\n")
        self._openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        )
        self._openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(self.ca),
            "-CAkey",
            str(self.ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(extfile),
            "-out",
            str(crt),
        )
        return crt, key

    def server_flags(self) -> list[str]:
        return [
            f"--cert-file={self.cert}",
            f"--key-file={self.key}",
            f"--trusted-ca-file={self.ca}",
            "--client-cert-auth",
            f"--peer-cert-file={self.cert}",
            f"--peer-key-file={self.key}",
            f"--peer-trusted-ca-file={self.ca}",
            "--peer-client-cert-auth",
        ]

    def etcdctl_args(self) -> list[str]:
        return [f"--cacert={self.ca}", f"--cert={self.client_cert}", f"--key={self.client_key}"]


class PeerProxy:
    """A TCP forwarder 127.0.0.1:``port`` -> 127.0.0.1:``target`` that can be cut."""

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        self.blocked = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", port))
        self._server.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.blocked:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._conns += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones (a partition, inbound)."""
        self.blocked = True
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def heal(self) -> None:
        self.blocked = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()
        self._thread.join(5)


class Cluster:
    """n members of keel-store (or etcd), started together."""

    def __init__(
        self,
        tmp: Path,
        n: int,
        binary: str = "keel",
        *,
        fsync: bool = True,
        extra: list[str] | None = None,
        proxied: bool = False,
        tls: TLSFiles | None = None,
        scheme: str | None = None,
        ctl: list[str] | None = None,
    ) -> None:
        """``scheme``: of the client and peer URLs (default: https with ``tls``);
        ``ctl``: etcdctl's TLS flags (default: from ``tls``)."""
        self.members: list[Proc] = []
        self.ctl: list[str] = ctl if ctl is not None else tls.etcdctl_args() if tls else []
        scheme = scheme or ("https" if tls else "http")
        self.proxies: list[PeerProxy] = []
        peers = [(f"m{i}", f"{scheme}://127.0.0.1:{free_port()}") for i in range(n)]
        initial = ",".join(f"{name}={url}" for name, url in peers)
        for name, peer_url in peers:
            listen_peer = peer_url
            if proxied:
                # Peers reach this member through a proxy on its advertised port, so a
                # test can cut the member off (inbound) without touching the process.
                listen_peer = f"http://127.0.0.1:{free_port()}"
                self.proxies.append(
                    PeerProxy(int(peer_url.rsplit(":", 1)[1]), int(listen_peer.rsplit(":", 1)[1]))
                )
            client_url = f"{scheme}://127.0.0.1:{free_port()}"
            data_dir = tmp / binary / name
            flags = [
                f"--name={name}",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={listen_peer}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster={initial}",
                "--initial-cluster-token=keel-test",
                *(tls.server_flags() if tls else []),
                *(extra or []),
            ]
            if binary == "keel":
                # Info: leader changes and snapshots are in the log if the test fails.
                argv = [sys.executable, "-m", "keel_store.daemon", "--log-level=info", *flags]
                if not fsync:
                    argv.append("--unsafe-no-fsync")
            else:
                argv = [ETCD, *flags, "--logger=zap", "--log-outputs=stderr"]
            self.members.append(
                Proc(name, argv, client_url, data_dir, tmp / f"{binary}-{name}.log")
            )

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members if m.alive)

    def start(self) -> Cluster:
        for m in self.members:
            m.start()
        for m in self.members:
            self.wait_ready(m)
        return self

    def wait_ready(self, member: Proc, timeout: float = 30) -> None:
        """Until ``endpoint health`` passes on ``member`` (a committed proposal)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not member.alive:
                raise AssertionError(f"{member.name} exited:\n{member.log_path.read_text()}")
            try:
                r = etcdctl(
                    member.endpoint, *self.ctl, "endpoint", "health", check=False, timeout=20
                )
            except subprocess.TimeoutExpired as exc:
                last = f"etcdctl endpoint health hung: {exc}"
                continue
            if r.returncode == 0:
                return
            last = r.stderr
            time.sleep(0.2)
        raise AssertionError(f"{member.name} not healthy in {timeout}s: {last}")

    def status(self) -> list[dict[str, object]]:
        out = etcdctl(self.endpoints, "endpoint", "status", "-w", "json").stdout
        return list(json.loads(out))

    def leader(self) -> Proc:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for m in self.members:
                if not m.alive:
                    continue
                r = etcdctl(m.endpoint, *self.ctl, "endpoint", "status", "-w", "json", check=False)
                if r.returncode == 0:
                    st = json.loads(r.stdout)[0]["Status"]
                    if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                        return m
            time.sleep(0.2)
        raise AssertionError("no leader")

    def stop(self) -> None:
        for m in self.members:
            m.kill(signal.SIGKILL)
        for proxy in self.proxies:
            proxy.close()


LOG_TAIL_LINES = 40
"""Lines of each member's log printed when a test that made a cluster fails."""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the item, for fixtures to see whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def print_log_tails(members: list[Proc]) -> None:
    """The end of each member's log, to the test's captured output."""
    for m in members:
        try:
            lines = m.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        print(f"--- {m.log_path.name}, last {LOG_TAIL_LINES} of {len(lines)} lines")
        print("\n".join(line[:400] for line in lines[-LOG_TAIL_LINES:]))


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """``make_cluster(n, binary="keel"|"etcd")``: started clusters, killed at teardown;
    when the test failed, the end of each member's log is printed."""
    made: list[Cluster] = []

    def make(n: int = 1, binary: str = "keel", **kw: object) -> Cluster:
        cluster = Cluster(tmp_path, n, binary, **kw)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for cluster in made:
            print_log_tails(cluster.members)


@pytest.fixture
def keel1(make_cluster) -> Cluster:  # type: ignore[no-untyped-def]
    return make_cluster(1)  # type: ignore[no-any-return]
