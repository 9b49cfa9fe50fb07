"""The daemon's garbage-collector policy: keep the key space out of full collections.

CPython's cyclic collector scans every tracked object of the oldest generation in a
full collection, and a member's key space is made of tracked objects (each key's
:class:`~keel_store.mvcc.keyspace.KeyHistory` and its lists, every ``KeyValue`` and
``Event`` message, every Raft entry kept in memory). A full collection runs whenever the
objects that survived into the oldest generation since the last one exceed a quarter of
it, so with a large key space each one stops the event loop for as long as the scan
takes: 17 ms with 10k keys and 52 ms with 30k were measured (docs/store.md, "Where a
put's time goes").

``gc.freeze()`` moves every tracked object into a permanent generation that collections
skip. The daemon (not library users: this is process-wide state) freezes once the node
has recovered (snapshot restored and the WAL's committed entries applied again, both
with the collector off), before it serves clients, and again after any
full collection that leaves at least :data:`REFREEZE_OBJECTS` objects in the oldest
generation, so a full collection scans roughly what was created since the previous
freeze, at most ~1.25x that many objects. At that moment the survivors have just been
found reachable and the younger generations are empty, so no garbage known to be
garbage is frozen. Measured (``benchmarks/store_profile.py gc``, 30k keys): the longest
collection went from 27-92 ms to 5-9 ms and the collector's time per put under 64
clients from 11-19 us to 6-9 us.

The price: a frozen object that later becomes unreachable only through a reference
cycle is never freed. Objects that become unreachable without cycles are still freed
by reference counting, frozen or not, and the key space is acyclic: superseded
versions, deleted keys, compacted history, revoked leases and a replaced state (a
snapshot install) go away by reference counting
(``components/store/tests/mvcc/test_gc_freeze.py`` checks this, and that it would
notice a cycle). What a freeze may still catch are transient objects of requests in
flight that later die in a cycle (exceptions with their tracebacks, for instance);
refreezing only after a large growth bounds how often that can happen
(``store_profile.py gc-soak``: the frozen set does not grow under a steady load).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

log = logging.getLogger("keel_store.gc")

REFREEZE_OBJECTS = 50_000
"""Refreeze after a full collection that leaves at least this many objects unfrozen in
the oldest generation (scanning 50k objects takes ~5 ms here, 0.1 us each)."""


class GcPolicy:
    """Freezes the heap after startup and after large growth (see the module docstring)."""

    def __init__(self, refreeze_objects: int = REFREEZE_OBJECTS) -> None:
        self.refreeze_objects = refreeze_objects
        self.freezes = 0
        """Freezes done (the startup one included)."""
        self.installed = False

    def install(self, *, collect: bool = True) -> None:
        """Collect and freeze everything now (after recovery), then watch full collections.

        ``collect=False`` freezes without collecting first: for a heap whose new objects
        were made with the collector off and hold no garbage cycles (the daemon's
        recovery), where a full collection would scan them all to find nothing."""
        if collect:
            gc.collect()
        self.freeze()
        gc.callbacks.append(self._on_gc)
        self.installed = True

    def uninstall(self) -> None:
        """Stop refreezing (what is frozen stays frozen until ``gc.unfreeze()``)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self.installed = False

    def freeze(self) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            # gc.get_freeze_count walks the whole permanent generation: counting
            # before and after took 0.4-0.7 s per refreeze with 200k keys.
            gc.freeze()
            self.freezes += 1
            return
        before = gc.get_freeze_count()
        gc.freeze()
        self.freezes += 1
        after = gc.get_freeze_count()
        log.debug("gc: froze %d objects (%d frozen in all)", after - before, after)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Called with the GIL held, by whichever thread's allocation started the
        # collection, while the collector still counts as running (so the list built by
        # get_objects cannot start another). After a full collection the younger
        # generations are empty: everything tracked is in the oldest one or frozen.
        if phase != "stop" or info["generation"] != 2:
            return
        if len(gc.get_objects(generation=2)) >= self.refreeze_objects:
            self.freeze()
