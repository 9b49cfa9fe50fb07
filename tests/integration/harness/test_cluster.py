"""Three machines on a private segment reach each other, and only each other."""

from __future__ import annotations

import itertools

import pytest

pytestmark = pytest.mark.vm


@pytest.mark.smoke
def test_three_machines_ping_each_other_over_the_private_network(cluster):
    nodes = cluster(3)
    for source, target in itertools.permutations(nodes, 2):
        nodes.ping(source, target)  # fails the test unless an ICMP echo reply comes back
    for node in nodes:
        # The private address sits on the NIC with the MAC the harness gave it.
        mac = node.config.private.mac
        link = node.succeed(f"ip -o link | grep -i {mac} | cut -d: -f2").strip()
        addrs = node.succeed(f"ip -o -4 addr show dev {link}")
        assert nodes.address(node) + "/24" in addrs
