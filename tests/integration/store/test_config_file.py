"""One etcd config file, two servers: Debian's etcd and keel-store start from the same
YAML (--config-file) and serve etcdctl alike; command-line flags are ignored by both."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from keel_core.testing import free_port

from .conftest import ETCD, Cluster, Proc, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]

TEMPLATE = """\
name: cfg-member
data-dir: {data}
snapshot-count: 10000
heartbeat-interval: 50
election-timeout: 500
listen-peer-urls: http://127.0.0.1:{peer}
listen-client-urls: http://127.0.0.1:{client}
initial-advertise-peer-urls: http://127.0.0.1:{peer}
advertise-client-urls: http://127.0.0.1:{client}
initial-cluster: cfg-member=http://127.0.0.1:{peer}
initial-cluster-token: cfg-token
initial-cluster-state: new
max-request-bytes: 4096
log-outputs: [stderr]
logger: zap
experimental-watch-progress-notify-interval: 5000000000
client-transport-security:
  client-cert-auth: false
"""


@pytest.mark.parametrize("binary", ["etcd", "keel"])
def test_both_servers_start_from_the_same_file(tmp_path: Path, binary: str) -> None:
    client = free_port()
    path = tmp_path / "etcd.conf.yml"
    path.write_text(TEMPLATE.format(data=tmp_path / "data", peer=free_port(), client=client))
    # A flag beside the file is ignored by both (etcd logs that it is).
    flags = [f"--config-file={path}", "--name=ignored", "--max-request-bytes=99999999"]
    argv = (
        [ETCD, *flags] if binary == "etcd" else [sys.executable, "-m", "keel_store.daemon", *flags]
    )
    member = Proc("cfg-member", argv, f"http://127.0.0.1:{client}", tmp_path / "data",
                  tmp_path / f"{binary}.log")  # fmt: skip
    cluster = Cluster.__new__(Cluster)
    cluster.members, cluster.ctl, cluster.proxies = [member], [], []
    member.start()
    try:
        cluster.wait_ready(member)
        etcdctl(member.endpoint, "put", "k", "v")
        listed = json.loads(etcdctl(member.endpoint, "member", "list", "-w", "json").stdout)
        assert [m["name"] for m in listed["members"]] == ["cfg-member"]
        # max-request-bytes from the file (4096), not the flag.
        big = etcdctl(member.endpoint, "put", "big", "x" * 5000, check=False)
        assert big.returncode != 0
        assert "request is too large" in big.stderr
        assert (tmp_path / "data" / "member" / "wal").is_dir()
    finally:
        member.kill()
