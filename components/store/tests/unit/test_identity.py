"""A member's identity: kept in its data directory, or asked of its peers when joining."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keel_core.testing import free_port
from keel_store import daemon
from keel_store.server import identity, transport
from keel_store.server.config import NodeConfig
from keel_store.server.members import ClusterConfigError

SPEC = "a=http://127.0.0.1:{a},b=http://127.0.0.1:{b}"


def _config(tmp_path: Path, name: str, spec: str, *more: str) -> NodeConfig:
    args = daemon.parse_args(
        [f"--name={name}", f"--data-dir={tmp_path / name}", f"--initial-cluster={spec}", *more],
        {},
    )
    return daemon.node_config(args)


def test_a_new_member_keeps_the_ids_of_its_flags_and_a_restart_goes_by_them(
    tmp_path: Path,
) -> None:
    spec = SPEC.format(a=1, b=2)
    config = _config(tmp_path, "a", spec)
    first = (config.cluster.id_of("a"), config.cluster.cluster_id)
    asyncio.run(identity.resolve(config, has_wal=False))
    assert identity.load(config) == first
    # The same data directory with other flags (etcd ignores --initial-cluster then).
    other = _config(tmp_path, "a", SPEC.format(a=3, b=2), "--initial-cluster-token=x")
    asyncio.run(identity.resolve(other, has_wal=True))
    assert (other.cluster.id_of("a"), other.cluster.cluster_id) == first
    identity.path(config).write_text("{not json")
    with pytest.raises(ClusterConfigError, match=r"keel-identity\.json: unreadable"):
        identity.load(config)


def test_a_joining_member_takes_its_ids_from_a_peer(tmp_path: Path) -> None:
    """The first peer is down, the second answers with the member list (``member add``
    gave the joiner an ID with the time in it); a peer of another cluster (wrong token)
    or flags that do not match fail with etcd's messages."""
    a_port, b_port, down = free_port(), free_port(), free_port()
    spec = f"a=http://127.0.0.1:{a_port},b=http://127.0.0.1:{b_port}"

    async def scenario() -> None:
        peer = transport.PeerTransport(7, "etcd-cluster", lambda s, k, p: None)  # the default
        url_a, url_b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
        members = [
            {"id": 7, "name": "a", "peer_urls": [url_a], "is_learner": False},
            {"id": 0xFEED, "name": "", "peer_urls": [url_b], "is_learner": True},
        ]
        peer.members_info = lambda: {"cluster_id": 0xC1, "members": members}
        await peer.listen(f"http://127.0.0.1:{a_port}")
        try:
            joiner = _config(
                tmp_path,
                "b",
                f"{spec},x=http://127.0.0.1:{down}",
                "--initial-cluster-state=existing",
            )
            joiner.cluster.members.pop(joiner.cluster.id_of("x"))  # dialled first, below
            urls = [f"http://127.0.0.1:{down}", f"http://127.0.0.1:{a_port}"]
            await identity._adopt_remote(joiner, urls)
            assert (joiner.cluster.id_of("b"), joiner.cluster.cluster_id) == (0xFEED, 0xC1)
            assert joiner.cluster.members[0xFEED].is_learner

            other = _config(tmp_path, "b", spec, "--initial-cluster-state=existing")
            await identity.resolve(other, has_wal=False)
            assert identity.load(other) == (0xFEED, 0xC1)

            with pytest.raises(ConnectionRefusedError, match="wrong cluster token"):
                await transport.ask_members(f"http://127.0.0.1:{a_port}", "other", None)
            three = _config(
                tmp_path / "3",
                "b",
                f"{spec},c=http://127.0.0.1:{down}",
                "--initial-cluster-state=existing",
            )
            with pytest.raises(ClusterConfigError, match="member count is unequal"):
                await identity.resolve(three, has_wal=False)
            assert identity.load(three) is None
        finally:
            await peer.close()
        alone = _config(tmp_path / "4", "b", spec, "--initial-cluster-state=existing")
        with pytest.raises(ClusterConfigError, match="cannot fetch cluster info from peer urls"):
            await identity.resolve(alone, has_wal=False)

    asyncio.run(scenario())
