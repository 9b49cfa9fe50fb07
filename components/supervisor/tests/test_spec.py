"""config.json generation from image config + container settings (unit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_supervisor import spec
from keel_supervisor.model import ContainerConfig, SupervisorError

IMAGE = {
    "Entrypoint": ["/bin/web"],
    "Cmd": ["--port", "80"],
    "Env": ["PATH=/opt/bin:/bin", "MODE=prod"],
    "WorkingDir": "/srv",
    "User": "nobody",
}


def build(tmp_path: Path, **settings: object) -> dict:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/passwd").write_text("nobody:x:65534:65533::/:/bin/false\n")
    (tmp_path / "etc/group").write_text("web:x:800:\n")
    config = ContainerConfig.model_validate({"image": "web", **settings})
    return spec.build(
        config,
        IMAGE,
        container_id="c" * 64,
        rootfs=tmp_path,
        volume_dirs={"cache": Path("/vol/cache")},
        netns=Path("/run/netns/x"),
    )


def test_image_config_becomes_process(tmp_path: Path) -> None:
    process = build(tmp_path)["process"]
    assert process["args"] == ["/bin/web", "--port", "80"]
    assert "PATH=/opt/bin:/bin" in process["env"]
    assert "MODE=prod" in process["env"]
    assert process["cwd"] == "/srv"
    assert process["user"] == {"uid": 65534, "gid": 65533}
    assert process["noNewPrivileges"] is True
    assert process["terminal"] is False


def test_user_settings_override_image(tmp_path: Path) -> None:
    process = build(
        tmp_path, command=["--debug"], env={"MODE": "dev"}, workdir="/tmp", user="1000:web"
    )["process"]
    assert process["args"] == ["/bin/web", "--debug"]
    assert "MODE=dev" in process["env"]
    assert "MODE=prod" not in process["env"]
    assert process["cwd"] == "/tmp"
    assert process["user"] == {"uid": 1000, "gid": 800}
    # An entrypoint of one's own drops the image's Cmd, as docker does.
    assert build(tmp_path, entrypoint=["/bin/sh"])["process"]["args"] == ["/bin/sh"]


def test_unknown_user_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SupervisorError, match="'alice' is not in the image's /etc/passwd"):
        build(tmp_path, user="alice")


def test_capabilities_default_add_drop(tmp_path: Path) -> None:
    caps = build(tmp_path)["process"]["capabilities"]["bounding"]
    assert caps == sorted(spec.DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in caps
    caps = build(tmp_path, cap_add=["sys_time"], cap_drop=["NET_RAW"])["process"]["capabilities"]
    assert "CAP_SYS_TIME" in caps["effective"]
    assert "CAP_NET_RAW" not in caps["effective"]
    assert build(tmp_path, cap_drop=["ALL"])["process"]["capabilities"]["bounding"] == []


def test_limits_volumes_and_readonly(tmp_path: Path) -> None:
    bind = tmp_path / "data"
    bind.mkdir()
    config = build(
        tmp_path,
        resources={"memory": "64m", "cpus": 0.5, "pids": 32},
        volumes=[f"{bind}:/data:ro", "cache:/cache"],
        read_only=True,
    )
    res = config["linux"]["resources"]
    assert res["memory"]["limit"] == 64 << 20
    assert res["cpu"] == {"quota": 50_000, "period": 100_000}
    assert res["pids"] == {"limit": 32}
    assert config["root"]["readonly"] is True
    mounts = {m["destination"]: m for m in config["mounts"]}
    assert mounts["/data"]["source"] == str(bind)
    assert "ro" in mounts["/data"]["options"]
    assert mounts["/cache"]["source"] == "/vol/cache"
    assert "rw" in mounts["/cache"]["options"]
    assert {"type": "network", "path": "/run/netns/x"} in config["linux"]["namespaces"]


def test_missing_bind_source_and_empty_command(tmp_path: Path) -> None:
    with pytest.raises(SupervisorError, match="does not exist"):
        build(tmp_path, volumes=["/no/such/dir:/x"])
    config = ContainerConfig(image="empty")
    with pytest.raises(SupervisorError, match="give a command"):
        spec.process_args(config, {})


def test_host_network_shares_the_namespace(tmp_path: Path) -> None:
    config = build(tmp_path, network="host")
    assert all(ns["type"] != "network" for ns in config["linux"]["namespaces"])
