"""GcPolicy: a freeze at install, and a refreeze after a full collection that leaves
enough objects in the oldest generation (not after a small one)."""

from __future__ import annotations

import gc
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
