"""SSH to machines: the per-run key pair and a small paramiko session.

One ed25519 key pair is generated per run (never a key from the developer's ~/.ssh); its
public half goes into every machine's fw_cfg config, its private half into a 0600 file the
testinfra host uses too. Commands run through ``sudo -n`` as root, like the NixOS
driver's backdoor shell, because the gate and health checks read root-only state.
"""

from __future__ import annotations

import io
import select
import shlex
import socket
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keel_harness.errors import SshError

CLI_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")
"""Options for the ``ssh`` command line tool: every boot makes a new host key."""


@dataclass(frozen=True)
class KeyPair:
    """A private key file and its ``ssh-ed25519 AAAA... comment`` public line."""

    private: Path
    public: str


def generate_key(path: Path, comment: str = "keel-harness") -> KeyPair:
    """Write a new ed25519 key to ``path`` (mode 0600) and ``path.pub``; reuse it if present."""
    pub_path = path.with_suffix(".pub")
    if path.exists() and pub_path.exists():
        return KeyPair(path, pub_path.read_text().strip())
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(private)
    tmp.chmod(0o600)
    line = f"{public.decode()} {comment}"
    pub_path.write_text(line + "\n")
    tmp.rename(path)
    return KeyPair(path, line)


def banner_ready(port: int, timeout: float = 2.0) -> bool:
    """Whether something on 127.0.0.1:``port`` speaks SSH (sends ``SSH-`` first)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


class BannerProbe:
    """Watches a port that QEMU's user network forwards to a booting guest's SSH server.

    QEMU accepts the connection on the host at once, whatever the guest does, then sends
    the guest a SYN. What comes back tells the state: the banner (sshd is up), end of
    stream (the guest has its address, nothing listens yet) or silence. Silence is either
    a guest with no address yet or an sshd slow to send its banner, so a silent connection
    is kept open up to ``hold`` seconds (``answered_hold`` once the guest has answered),
    at most ``pool`` at a time; once the guest is known to have its address, a second
    one only after the first stayed silent for ``second_after`` seconds.

    A probe made before the guest has its address is not lost: QEMU delivers it when the
    address comes, even if the harness closed it long before, and each costs the guest an
    sshd child then (the old probe's one per 2.5 s made 19 at load 8). So until
    ``address_known()`` (see :mod:`keel_harness.netwatch`) says the guest has its address,
    or the guest answers, a probe is opened only every ``quiet_period`` seconds (a fallback
    for guests with a static address, which QEMU's DHCP server never sees); then every
    ``period``: the banner is seen within about ``period`` of sshd being ready.
    """

    def __init__(
        self,
        port: int,
        *,
        address_known: Callable[[], bool] | None = None,
        period: float = 0.25,
        quiet_period: float = 5.0,
        hold: float = 2.0,
        answered_hold: float = 10.0,
        pool: int = 2,
        second_after: float = 0.75,
    ) -> None:
        self.port = port
        self.address_known = address_known
        self.period = period
        self.quiet_period = quiet_period
        self.hold = hold
        self.answered_hold = answered_hold
        self.pool = pool
        self.second_after = second_after
        self.answered = False
        """Whether the guest's network has answered a probe (a banner or end of stream)."""
        self._open: dict[socket.socket, tuple[float, bytes]] = {}
        self._last_open = -1e9
        self._ready: tuple[socket.socket, bytes] | None = None
        self._fast = False

    def poll(self, wait: float) -> bool:
        """Open a probe if one is due, then wait up to ``wait`` s for a banner on any."""
        now = time.monotonic()
        hold = self.answered_hold if self.answered else self.hold
        for sock, (opened, _) in list(self._open.items()):
            if now - opened > hold:
                self._drop(sock)
        fast = self.answered or (self.address_known is not None and self.address_known())
        if fast and not self._fast:
            # The guest has just got its address: probes opened before are held by QEMU
            # until its own SYN retries reach the guest (seconds); they would fill the pool
            # meanwhile. Fresh probes reach it at once.
            self._fast = True
            for sock in list(self._open):
                self._drop(sock)
        period = self.period if fast else self.quiet_period
        # Once the guest has its address, a second probe only when the newest has been
        # silent for ``second_after`` s: each probe is an sshd started in the guest
        # (ssh.socket), which would compete with the first one's banner; but a probe sent
        # just before the guest configured the address is lost until QEMU resends its SYN.
        newest = max((opened for opened, _ in self._open.values()), default=None)
        due = not fast or newest is None or now - newest >= self.second_after
        if len(self._open) < self.pool and due and now - self._last_open >= period:
            self._last_open = now
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
            except OSError:
                pass  # QEMU not listening (yet, or any more): the caller checks QEMU
            else:
                sock.setblocking(False)
                self._open[sock] = (now, b"")
        if not self._open:
            time.sleep(wait)
            return False
        deadline = time.monotonic() + wait
        while self._open:
            left = deadline - time.monotonic()
            readable, _, _ = select.select(list(self._open), [], [], max(0.0, left))
            for sock in readable:
                if self._read(sock):
                    return True
            if left <= 0:
                break
        return False

    def _read(self, sock: socket.socket) -> bool:
        opened, got = self._open[sock]
        try:
            data = sock.recv(4 - len(got))
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:  # end of stream: the guest answered, nothing listens yet
            self.answered = True
            self._drop(sock)
            return False
        got += data
        if not b"SSH-".startswith(got[:4]):  # something else speaks on this port
            self.answered = True
            self._drop(sock)
            return False
        self._open[sock] = (opened, got)
        if len(got) >= 4:
            self.answered = True
            self._ready = (sock, got)
            return True
        return False

    def take(self) -> tuple[socket.socket, bytes] | None:
        """The connection that showed the banner, and the bytes read from it; the caller owns it.

        Logging in on it instead of on a new connection spares the guest one more sshd child
        (a fork and a re-exec of sshd, tenths of a second under emulation) on the path that
        the boot time figures measure.
        """
        if self._ready is None:
            return None
        sock, got = self._ready
        self._ready = None
        del self._open[sock]
        sock.setblocking(True)
        return sock, got

    def _drop(self, sock: socket.socket) -> None:
        del self._open[sock]
        if self._ready is not None and self._ready[0] is sock:
            self._ready = None
        sock.close()

    def close(self) -> None:
        """Close every probe connection (idempotent)."""
        for sock in list(self._open):
            self._drop(sock)


class _Replayed:
    """A socket whose first ``recv`` calls return bytes already read from it."""

    def __init__(self, sock: socket.socket, read: bytes) -> None:
        self._sock = sock
        self._read = read

    def recv(self, size: int) -> bytes:
        if self._read:
            out, self._read = self._read[:size], self._read[size:]
            return out
        return self._sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Session:
    """An authenticated SSH connection to one machine."""

    def __init__(self, port: int, key: KeyPair, user: str = "core") -> None:
        self.port = port
        self.user = user
        self._key = paramiko.Ed25519Key.from_private_key_file(str(key.private))
        self._client: paramiko.SSHClient | None = None

    def connect(
        self, timeout: float = 15.0, *, sock: socket.socket | None = None, read: bytes = b""
    ) -> None:
        """Open the connection; raises :class:`SshError` if the server refuses us.

        ``sock``: an open connection to the port to log in on (e.g. a probe's), of which
        ``read`` was already read (the start of the server's banner).
        """
        client = paramiko.SSHClient()
        # Test machines are new on every boot; their host keys mean nothing to us.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        channel = _Replayed(sock, read) if sock is not None else None
        try:
            client.connect(
                "127.0.0.1", port=self.port, username=self.user, pkey=self._key,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                allow_agent=False, look_for_keys=False, sock=channel,
            )  # fmt: skip
        except paramiko.AuthenticationException as exc:
            client.close()
            who = f"{self.user}@127.0.0.1:{self.port}"
            raise SshError(f"{who} refused the run's key: {exc}") from None
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            raise SshError(f"cannot reach SSH on 127.0.0.1:{self.port}: {exc}") from exc
        self._client = client

    @property
    def connected(self) -> bool:
        """Whether the transport is open."""
        if self._client is None:
            return False
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, command: str, timeout: float, *, root: bool = True) -> tuple[int, str, str]:
        """Run ``command`` with ``sh -c``; returns (status, stdout, stderr)."""
        out, err, status = self._exec(command, timeout, root=root)
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def write_file(self, path: str, data: bytes, mode: int, timeout: float) -> None:
        """Write ``data`` to ``path`` in the guest as root (parents created) with ``mode``."""
        if self._client is None:
            raise SshError("not connected")
        q = shlex.quote(path)
        script = f'mkdir -p "$(dirname {q})" && cat > {q} && chmod {mode:o} {q}'
        try:
            stdin, stdout, stderr = self._client.exec_command(
                f"sudo -n sh -c {shlex.quote(script)}", timeout=timeout
            )
            stdin.write(data)
            stdin.channel.shutdown_write()
            status = stdout.channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise SshError(f"SSH to 127.0.0.1:{self.port} broke writing {path}: {exc}") from exc
        if status != 0:
            raise SshError(f"cannot write {path} in the guest: {stderr.read().decode()}")

    def read_tar(self, path: str, timeout: float) -> bytes:
        """A tar stream of ``path`` (file or directory) from the guest, read as root."""
        p = Path(path)
        command = f"tar -C {shlex.quote(str(p.parent))} -cf - {shlex.quote(p.name)}"
        out, err, status = self._exec(command, timeout, root=True)
        if status != 0:
            raise SshError(f"cannot read {path} from the guest: {err.decode(errors='replace')}")
        return out

    def _exec(self, command: str, timeout: float, *, root: bool) -> tuple[bytes, bytes, int]:
        if self._client is None:
            raise SshError("not connected")
        full = f"sudo -n sh -c {shlex.quote(command)}" if root else command
        try:
            _, stdout, _ = self._client.exec_command(full, timeout=timeout)
            channel = stdout.channel
            out, err = io.BytesIO(), io.BytesIO()
            deadline = time.monotonic() + timeout
            while not channel.exit_status_ready() or channel.recv_ready():
                if channel.recv_ready():
                    out.write(channel.recv(65536))
                elif channel.recv_stderr_ready():
                    err.write(channel.recv_stderr(65536))
                else:
                    if time.monotonic() > deadline:
                        channel.close()
                        raise SshError(f"command timed out after {timeout:.0f} s: {command}")
                    time.sleep(0.02)
            while channel.recv_stderr_ready():
                err.write(channel.recv_stderr(65536))
            return out.getvalue(), err.getvalue(), channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise SshError(f"SSH to 127.0.0.1:{self.port} broke during {command!r}: {exc}") from exc


def extract_tar(data: bytes, destination: Path) -> list[Path]:
    """Unpack a tar stream from :meth:`Session.read_tar` below ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(destination, filter="data")
        return [destination / m.name for m in archive.getmembers()]
