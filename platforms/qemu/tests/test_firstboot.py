"""The fw_cfg first-boot reader (a shell script with an awk JSON reader) on a scratch tree."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from keel_core.schemas import ImageDefinition
from keel_platform_qemu import plugin

SCRIPT = Path(str(resources.files("keel_platform_qemu") / "firstboot.sh"))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKupW9T0rpzUs+umZlQWxFGgbp3uIWWz4erXnGDlXtS2 t@h"
PASSWD = "root:x:0:0::/root:/bin/sh\ncore:x:500:500::/home/core:/bin/bash\n"


def apply(tmp_path: Path, config: str | None) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(PASSWD)
    env = {**os.environ, "KEEL_ROOT": str(root), "KEEL_FW_CFG": str(tmp_path / "raw")}
    if config is not None:
        (tmp_path / "raw").write_text(config)
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, check=False)


def test_hostname_keys_and_static_address_are_applied(tmp_path: Path):
    config = {
        "hostname": "node1",
        "users": [
            {"name": "core", "ssh_authorized_keys": [KEY, KEY.replace("t@h", "u@h")]},
            {"name": "ghost", "ssh_authorized_keys": [KEY]},
        ],
        "network": {
            "interfaces": [
                {"mac": "52:54:00:00:00:11", "address": "192.0.2.11/24"},
                {"mac": "52:54:00:00:00:12"},
            ]
        },
    }
    proc = apply(tmp_path, json.dumps(config))
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "root"
    assert (root / "etc/hostname").read_text() == "node1\n"
    assert "127.0.1.1 node1" in (root / "etc/hosts").read_text()
    keys = (root / "home/core/.ssh/authorized_keys").read_text().splitlines()
    assert keys == [KEY, KEY.replace("t@h", "u@h")]
    assert (root / "home/core/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
    assert "no user 'ghost'" in proc.stderr
    networks = sorted((root / "etc/systemd/network").iterdir())
    assert [n.name for n in networks] == ["10-keel-static-1.network"]
    text = networks[0].read_text()
    assert "MACAddress=52:54:00:00:00:11" in text
    assert "Address=192.0.2.11/24" in text


def test_missing_config_does_nothing(tmp_path: Path):
    proc = apply(tmp_path, None)
    assert proc.returncode == 0
    assert "nothing to do" in proc.stdout
    assert not (tmp_path / "root/etc/hostname").exists()


def test_malformed_config_fails_the_unit(tmp_path: Path):
    proc = apply(tmp_path, "[1, 2")
    assert proc.returncode == 1
    assert "not a JSON object" in proc.stderr


def test_platform_and_contribution():
    (platform,) = plugin.keel_platforms()
    assert platform.name == "qemu"
    assert "console=ttyS0,115200" in platform.kernel_args
    assert "no_timer_check" in platform.kernel_args  # no spurious panic on a busy host
    assert "qemu_fw_cfg" in platform.kernel_modules
    assert [f.filename for f in platform.formats] == ["disk.qcow2"]
    image = ImageDefinition(name="x", version="1", platforms=["qemu"])
    contribution = plugin.keel_image_contribution(image)
    assert contribution is not None
    assert "keel-qemu-firstboot.service" in contribution.units
    other = ImageDefinition(name="x", version="1", platforms=[])
    assert plugin.keel_image_contribution(other) is None


def test_qcow2_conversion_keeps_the_content(tmp_path: Path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"KEEL" * 1024 + bytes(1 << 20))
    plugin.convert_qcow2(raw, tmp_path / "disk.qcow2")
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", tmp_path / "disk.qcow2", back], check=True)
    assert back.read_bytes() == raw.read_bytes()


def test_any_key_order_escapes_and_nesting_are_read(tmp_path: Path):
    text = (
        '{"network": {"interfaces": [{"address": "192.0.2.11/24", "x": [1, -2.5e3, true, null,'
        ' {"a": {}}], "mac": "52:54:00:00:00:11"}]}, "users": [{"ssh_authorized_keys":'
        ' ["ssh-ed25519 AAAA k\\u00e9 \\"q\\" \\\\ \\/"], "name": "core"}],'
        ' "hostname": "n\\u0031", "extra": false}'
    )
    proc = apply(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "root"
    assert (root / "etc/hostname").read_text() == "n1\n"
    assert (
        root / "home/core/.ssh/authorized_keys"
    ).read_text() == 'ssh-ed25519 AAAA k\u00e9 "q" \\ /\n'
    text = (root / "etc/systemd/network/10-keel-static-1.network").read_text()
    assert "MACAddress=52:54:00:00:00:11" in text
    assert "Address=192.0.2.11/24" in text


@pytest.mark.parametrize(
    "text", ["[1, 2]", '{"a": 1', '{"a": "x}', '{"a": 1} x', "", '{"a": tru}', '{"a": "\\q"}']
)
def test_anything_but_a_json_object_fails_the_unit(tmp_path: Path, text: str):
    proc = apply(tmp_path, text)
    assert proc.returncode == 1
    assert "not a JSON object" in proc.stderr
    assert not (tmp_path / "root/etc/hostname").exists()
