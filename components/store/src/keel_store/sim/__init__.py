"""A deterministic simulator for the Raft core: one seed, one exactly repeatable run.

``python -m keel_store.sim --seeds 500`` runs seeds 0..499: a cluster of RaftNodes on a
network that drops, delays, reorders, duplicates and partitions; nodes that crash (losing
what they had not synced) and restart; clocks that run at different rates; clients doing
get/put/delete/cas. Each run checks election safety, log matching, leader completeness,
state-machine safety, that no acknowledged write was lost, and that the clients' history
is linearizable. A failing seed prints the command that replays it.
"""

from keel_store.sim.options import SimOptions
from keel_store.sim.world import RunResult, run_seed

__all__ = ["RunResult", "SimOptions", "run_seed"]
