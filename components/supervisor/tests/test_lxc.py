"""The OCI-to-LXC translation (unit)."""

from __future__ import annotations

from pathlib import Path

from keel_supervisor import lxc, spec
from keel_supervisor.model import ContainerConfig


def test_lxc_config_carries_the_bundle_over(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = ContainerConfig.model_validate(
        {
            "image": "x",
            "command": ["sleep", "1"],
            "user": "1000:1000",
            "workdir": "/srv",
            "env": {"A": "b"},
            "cap_drop": ["ALL"],
            "cap_add": ["NET_BIND_SERVICE"],
            "resources": {"memory": "32m", "pids": 10, "cpus": 0.25},
            "volumes": [f"{data}:/data:ro"],
            "read_only": True,
        }
    )
    bundle = spec.build(
        config,
        {},
        container_id="a" * 64,
        rootfs=tmp_path,
        volume_dirs={},
        netns=Path("/run/netns/keel-aaaa"),
    )
    text = lxc.lxc_config(bundle, "a" * 64)
    lines = set(text.splitlines())
    assert f"lxc.rootfs.path = dir:{tmp_path}" in lines
    assert "lxc.rootfs.options = ro" in lines
    assert "lxc.init.uid = 1000" in lines
    assert "lxc.init.cwd = /srv" in lines
    assert "lxc.environment = A=b" in lines
    assert "lxc.cap.keep = net_bind_service" in lines
    assert "lxc.no_new_privs = 1" in lines
    assert "lxc.cgroup.memory.limit_in_bytes = 33554432" in lines
    assert "lxc.cgroup.pids.max = 10" in lines
    assert "lxc.cgroup.cpu.cfs_quota_us = 25000" in lines
    assert f"lxc.cgroup.dir = keel/{'a' * 64}" in lines
    assert "lxc.namespace.share.net = /run/netns/keel-aaaa" in lines
    assert f"lxc.mount.entry = {data} data none rbind,ro,create=dir 0 0" in lines
    host = spec.build(
        config.model_copy(update={"network": "host"}),
        {},
        container_id="b" * 64,
        rootfs=tmp_path,
        volume_dirs={},
        netns=None,
    )
    assert "lxc.net.0.type = none" in lxc.lxc_config(host, "b" * 64).splitlines()
