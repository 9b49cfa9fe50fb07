"""The store's etcd stubs must coexist with an etcd client library in one process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("first", ["keel", "aetcd"])
def test_store_stubs_and_aetcd_import_together(first: str):
    pytest.importorskip("aetcd")
    keel = "from keel_store._generated.etcdserverpb import rpc_pb2 as keel_rpc"
    other = "from aetcd.rpc import rpc_pb2 as aetcd_rpc"
    code = textwrap.dedent(
        f"""
        {keel if first == "keel" else other}
        {other if first == "keel" else keel}
        wire = keel_rpc.RangeRequest(key=b"foo", limit=3).SerializeToString()
        back = aetcd_rpc.RangeRequest.FromString(wire)
        assert (back.key, back.limit) == (b"foo", 3), back
        assert keel_rpc.RangeRequest.DESCRIPTOR.full_name == "etcdserverpb.RangeRequest"
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
