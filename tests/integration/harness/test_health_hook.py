"""Health checks that third-party plugins add through ``keel_health_checks`` run in the gate."""

from __future__ import annotations

import pytest

from keel_core import plugins
from keel_core.hookspecs import hookimpl
from keel_core.types import HealthCheck
from keel_harness import GateFailure, Machine, run_gate
from keel_harness.gate import hook_checks

pytestmark = [pytest.mark.vm, pytest.mark.gate]


class ThirdParty:
    """A plugin from outside Keel: one check that passes (and leaves a mark), one that fails."""

    @hookimpl
    def keel_health_checks(self):
        return [
            HealthCheck("third-party-ok", "touch /run/third-party-ran && test -d /etc"),
            HealthCheck(
                "third-party-broken", "echo 'widget is not ready' >&2; exit 3", "the widget answers"
            ),
        ]


def test_third_party_check_runs_in_the_guest_and_fails_the_gate_by_name(machine: Machine):
    checks = hook_checks(plugins.load(extra=[("third-party", ThirdParty())]))
    with pytest.raises(GateFailure) as failure:
        run_gate(machine, checks=checks)
    problems = failure.value.problems
    assert len(problems) == 1, problems
    assert "health check 'third-party-broken' failed (exit 3)" in problems[0]
    assert "widget is not ready" in problems[0]
    machine.succeed("test -e /run/third-party-ran")  # the passing check ran in the guest
