"""A third-party Python etcd library (aetcd, from PyPI) runs its usual calls on keel-store.

The same script runs against real etcd; both summaries must be equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]

SCRIPT = Path(__file__).with_name("aetcd_calls.py")


def run(endpoint: str) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), endpoint],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_aetcd_same_results_as_on_etcd(make_cluster) -> None:
    keel = make_cluster(1)
    etcd = make_cluster(1, binary="etcd")
    ours = run(keel.members[0].endpoint)
    assert ours["replace_ok"] is True
    assert ours["replace_stale"] is False
    assert ours["lease_keys"] == ["leased"]
    assert ours["lock_held"] is True
    assert ours == run(etcd.members[0].endpoint)
