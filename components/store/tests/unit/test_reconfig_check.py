"""--strict-reconfig-check: etcd 3.4's IsReadyTo* formulas and connectivity rules."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from keel_store.mvcc import errors
from keel_store.mvcc.store import MemberRecord
from keel_store.server.membership import HEALTH_INTERVAL, MembershipMixin


class Member(MembershipMixin):
    """Member 1's view: ``names`` members have a name (started), ``learners`` do not
    vote, ``connected`` peers are connected since ``since`` seconds ago."""

    def __init__(
        self,
        names: dict[int, str],
        learners: tuple[int, ...] = (),
        connected: dict[int, float] | None = None,
        strict: bool = True,
    ) -> None:
        now = time.monotonic()
        active = {mid: now - ago for mid, ago in (connected or {}).items()}
        self.sm = SimpleNamespace(  # type: ignore[assignment]
            members={
                mid: MemberRecord(mid, n, [f"u{mid}"], mid in learners) for mid, n in names.items()
            }
        )
        self.attributes = {}
        self.raft = SimpleNamespace(id=1)  # type: ignore[assignment]
        self.transport = SimpleNamespace(active_since=active.get)  # type: ignore[assignment]
        self.config = SimpleNamespace(strict_reconfig_check=strict)  # type: ignore[assignment]


OLD = HEALTH_INTERVAL + 1
THREE_UP = {2: OLD, 3: OLD}


def test_add_needs_started_quorum_and_every_voter_connected() -> None:
    Member({1: "a", 2: "b", 3: "c"}, connected=THREE_UP).check_add(False)
    with pytest.raises(type(errors.UNHEALTHY)) as exc:
        Member({1: "a", 2: "b", 3: "c"}, connected={2: OLD, 3: 1.0}).check_add(False)
    assert exc.value == errors.UNHEALTHY  # connected for less than 5 s
    with pytest.raises(type(errors.UNHEALTHY)) as exc:
        Member({1: "a", 2: "b", 3: "c"}, connected={2: OLD}).check_add(True)
    assert exc.value == errors.UNHEALTHY  # a learner too
    # 2 started of 3 voters, adding a 4th: 2 < 3.
    with pytest.raises(type(errors.UNHEALTHY)) as exc:
        Member({1: "a", 2: "b", 3: ""}, connected=THREE_UP).check_add(False)
    assert exc.value == errors.NOT_ENOUGH_STARTED
    # ... but a learner may be added.
    Member({1: "a", 2: "b", 3: ""}, connected=THREE_UP).check_add(True)
    # A member that announced itself when it connected has started.
    m = Member({1: "a", 2: "b", 3: ""}, connected=THREE_UP)
    m.attributes[3] = ("c", ["http://c"])
    m.check_add(False)
    # One started member adding a second: allowed (restoring from a backup) ...
    Member({1: "a"}).check_add(False)
    # ... not a third while the second never started.
    with pytest.raises(type(errors.UNHEALTHY)) as exc:
        Member({1: "a", 2: ""}).check_add(False)
    assert exc.value == errors.NOT_ENOUGH_STARTED


def test_remove() -> None:
    # A member that is down may go; a live one only if the rest keep a quorum connected.
    Member({1: "a", 2: "b", 3: "c"}, connected={2: OLD}).check_remove(3)
    with pytest.raises(type(errors.UNHEALTHY)) as exc:
        Member({1: "a", 2: "b", 3: "c"}, connected={2: OLD}).check_remove(2)
    assert exc.value == errors.UNHEALTHY
    Member({1: "a", 2: "b", 3: "c"}, connected=THREE_UP).check_remove(2)
    # Removing ourselves: fine from a fully connected 3 (3 - 1 >= 1 + 1), not with one down.
    Member({1: "a", 2: "b", 3: "c"}, connected=THREE_UP).check_remove(1)
    with pytest.raises(type(errors.UNHEALTHY)) as exc:
        Member({1: "a", 2: "b", 3: "c"}, connected={2: OLD}).check_remove(1)
    assert exc.value == errors.UNHEALTHY
    with pytest.raises(type(errors.UNHEALTHY)) as exc:
        Member({1: "a", 2: "", 3: "c"}, connected={3: OLD}).check_remove(3)
    assert exc.value == errors.NOT_ENOUGH_STARTED  # 1 started of the 2 left
    Member({1: "a", 2: "b", 3: "c"}, learners=(3,), connected={}).check_remove(3)


def test_promote_counts_the_learner_as_started() -> None:
    Member({1: "a", 2: "", 9: ""}, learners=(9,)).check_promote(9)  # 2 of 3
    with pytest.raises(type(errors.UNHEALTHY)) as exc:
        Member({1: "a", 2: "", 3: "", 9: ""}, learners=(9,)).check_promote(9)  # 2 of 4
    assert exc.value == errors.NOT_ENOUGH_STARTED


def test_off_checks_nothing() -> None:
    m = Member({1: "a", 2: "", 3: "", 9: ""}, learners=(9,), strict=False)
    m.check_add(False)
    m.check_remove(2)
    m.check_promote(9)
