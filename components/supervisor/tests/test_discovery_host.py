"""Service registration in a real etcd (Debian's), read back with the real etcdctl (host)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from keel_core.testing import free_port
from keel_supervisor.discovery import domain_path
from keel_supervisor.testing import DaemonProcess, wait_for

from .conftest import etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]


def registered(endpoint: str) -> dict[str, dict]:
    out = etcdctl(endpoint, "get", "--prefix", "/skydns/", "-w", "json").stdout
    kvs = json.loads(out).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
        for kv in kvs
    }


def test_domain_path() -> None:
    assert domain_path("keel.local") == "/skydns/local/keel"
    assert domain_path("a.b.example.org.") == "/skydns/org/example/b/a"


def test_registration_follows_the_container(
    daemon_with_etcd: DaemonProcess, etcd: str, busybox_rootfs: Path
) -> None:
    daemon = daemon_with_etcd
    port = free_port()
    cid = daemon.keel(
        "run",
        "--rootfs",
        "--name",
        "api",
        "--service",
        "api",
        "-p",
        f"{port}:80",
        "--health-cmd",
        "test ! -e /tmp/sick",
        "--health-interval",
        "0.3",
        "--health-retries",
        "1",
        str(busybox_rootfs),
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ).stdout.strip()
    key = f"/skydns/local/keel/api/{cid[:12]}"
    wait_for(lambda: key in registered(etcd), what="the registration")
    assert registered(etcd)[key] == {"host": "127.0.0.1", "port": port}
    lease = etcdctl(etcd, "get", key, "-w", "json").stdout
    assert json.loads(lease)["kvs"][0]["lease"] != 0  # under a lease, so it dies with the node
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keel_core.cli import main; main()",
            "services",
            "--socket",
            str(daemon.socket),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "api" in listed
    assert str(port) in listed
    assert cid[:12] in listed
    # Unhealthy: withdrawn (the policy is "no", so the container keeps running).
    daemon.keel("exec", "api", "touch", "/tmp/sick")
    wait_for(lambda: key not in registered(etcd), what="withdrawal when unhealthy")
    daemon.keel("exec", "api", "rm", "/tmp/sick")
    wait_for(lambda: key in registered(etcd), what="registration when healthy again")
    # Stopped: withdrawn.
    daemon.keel("stop", "-t", "1", "api")
    wait_for(lambda: key not in registered(etcd), what="withdrawal when stopped")


def test_registration_expires_when_the_supervisor_dies(
    daemon_with_etcd: DaemonProcess, etcd: str, busybox_rootfs: Path
) -> None:
    daemon = daemon_with_etcd
    port = free_port()
    cid = daemon.keel(
        "run",
        "--rootfs",
        "--name",
        "db",
        "--service",
        "db",
        "-p",
        f"{port}:80",
        str(busybox_rootfs),
        "httpd",
        "-f",
        "-p",
        "80",
    ).stdout.strip()
    key = f"/skydns/local/keel/db/{cid[:12]}"
    wait_for(lambda: key in registered(etcd), what="the registration")
    daemon.kill()  # no clean withdrawal: the lease (3 s) must run out
    wait_for(lambda: key not in registered(etcd), timeout=20, what="the lease to expire")
    daemon.start()
    wait_for(lambda: key in registered(etcd), what="re-registration after restart")
