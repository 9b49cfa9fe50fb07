"""First-boot configuration handed to a machine through QEMU fw_cfg (the qemu platform).

The document follows the image/harness contract: hostname, the ``core`` user's SSH keys,
and static addresses for the private network's interfaces, matched by MAC. The guest reads
it from ``/sys/firmware/qemu_fw_cfg/by_name/opt/org.keel/config/raw``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StaticInterface:
    """An interface the guest configures itself: its MAC and address with prefix."""

    mac: str
    address: str


def config_document(
    hostname: str,
    ssh_keys: Sequence[str],
    interfaces: Sequence[StaticInterface] = (),
    user: str = "core",
) -> dict[str, Any]:
    """The fw_cfg JSON document for one machine."""
    return {
        "hostname": hostname,
        "users": [{"name": user, "ssh_authorized_keys": list(ssh_keys)}],
        "network": {
            "interfaces": [{"mac": i.mac, "address": i.address} for i in interfaces],
        },
    }


def write_config(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` where QEMU's ``-fw_cfg file=`` will read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path
