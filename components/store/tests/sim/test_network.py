"""The simulated network: delays, drops, duplicates, partitions."""

import random

from keel_store.raft import Message, MessageType
from keel_store.sim.network import Network


def msg(sender: int, to: int, n: int = 0) -> Message:
    return Message(MessageType.HEARTBEAT, to, sender, term=1, commit=n)


def test_partition_blocks_both_ways_and_heal_restores() -> None:
    net = Network(random.Random(1), max_delay=1, drop_rate=0, duplicate_rate=0, straggler_rate=0)
    net.groups = {1: 0, 2: 1, 3: 0}
    net.send(msg(1, 2), 0)
    net.send(msg(2, 1), 0)
    net.send(msg(1, 3), 0)
    assert [(m.sender, m.to) for m in net.due(5)] == [(1, 3)]
    net.heal()
    net.send(msg(1, 2), 5)
    assert [(m.sender, m.to) for m in net.due(6)] == [(1, 2)]


def test_messages_are_reordered_dropped_and_duplicated() -> None:
    net = Network(random.Random(3), max_delay=4, drop_rate=0.2, duplicate_rate=0.2)
    for n in range(500):
        net.send(msg(1, 2, n), 0)
    got = [m.commit for m in net.due(10**6)]
    assert len(set(got)) < 500  # some dropped
    assert len(got) > len(set(got))  # some duplicated
    assert got != sorted(got)  # some reordered


def test_message_arriving_during_a_partition_is_lost() -> None:
    net = Network(random.Random(1), max_delay=3, drop_rate=0, duplicate_rate=0, straggler_rate=0)
    net.send(msg(1, 2), 0)
    net.partition([1, 2])
    assert net.due(10) == []
