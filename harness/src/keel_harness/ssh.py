"""SSH to machines: the per-run key pair and a small paramiko session.

One ed25519 key pair is generated per run (never a key from the developer's ~/.ssh); its
public half goes into every machine's fw_cfg config, its private half into a 0600 file the
testinfra host uses too. Commands run through ``sudo -n`` as root, like the NixOS
driver's backdoor shell, because the gate and health checks read root-only state.
"""

from __future__ import annotations

import io
import shlex
import socket
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

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


class Session:
    """An authenticated SSH connection to one machine."""

    def __init__(self, port: int, key: KeyPair, user: str = "core") -> None:
        self.port = port
        self.user = user
        self._key = paramiko.Ed25519Key.from_private_key_file(str(key.private))
        self._client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 15.0) -> None:
        """Open the connection; raises :class:`SshError` if the server refuses us."""
        client = paramiko.SSHClient()
        # Test machines are new on every boot; their host keys mean nothing to us.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "127.0.0.1", port=self.port, username=self.user, pkey=self._key,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                allow_agent=False, look_for_keys=False,
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
