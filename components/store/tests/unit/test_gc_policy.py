"""GcPolicy: a freeze at install, and a refreeze after a full collection that leaves
enough objects in the oldest generation (not after a small one)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from keel_store.server.gc_policy import GcPolicy


@pytest.fixture
def policy() -> Iterator[GcPolicy]:
    assert gc.get_freeze_count() == 0, "something else froze this process"
    p = GcPolicy(refreeze_objects=20_000)
    try:
        yield p
    finally:
        p.uninstall()
        gc.unfreeze()


def test_install_freezes_and_large_growth_refreezes(policy: GcPolicy) -> None:
    policy.install()
    assert policy.installed
    assert policy.freezes == 1
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # at least the imported modules' objects
    small = [[i] for i in range(1_000)]
    gc.collect()
    assert policy.freezes == 1, "a full collection with few survivors froze them"
    large = [[i] for i in range(30_000)]
    gc.collect()
    assert policy.freezes == 2
    assert gc.get_freeze_count() >= frozen + len(small) + len(large)
    policy.uninstall()
    gc.collect()
    assert policy.freezes == 2
    assert not policy.installed


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _garbage_cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.mark.parametrize("collect", [True, False])
def test_install_collects_first_unless_told_not_to(policy: GcPolicy, collect: bool) -> None:
    enabled = gc.isenabled()
    gc.disable()  # the cycle stays until a collection finds it
    try:
        cycle = _garbage_cycle()
        assert cycle() is not None
        policy.install(collect=collect)
    finally:
        if enabled:
            gc.enable()
    assert policy.freezes == 1
    gc.collect()
    # Collected first: gone. Frozen without a collection: kept (the price of not
    # scanning a heap known to hold no such cycles).
    assert (cycle() is None) is collect
