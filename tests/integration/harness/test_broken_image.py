"""An image with a failing unit fails the gate, and the gate names the unit."""

from __future__ import annotations

import pytest

from keel_core.hookspecs import hookimpl
from keel_core.types import FileContribution, ImageContribution
from keel_harness import GateFailure, run_gate

pytestmark = [pytest.mark.vm, pytest.mark.gate]

UNIT = b"""[Unit]
Description=Fails on purpose (keel-harness broken-image test)

[Service]
Type=oneshot
ExecStart=/bin/false

[Install]
WantedBy=multi-user.target
"""


class BrokenUnit:
    """Adds ``keel-broken.service``, which always fails."""

    @hookimpl
    def keel_image_contribution(self, image):
        return ImageContribution(
            name="harness-broken-unit",
            files=[FileContribution("/usr/lib/systemd/system/keel-broken.service", content=UNIT)],
            units=["keel-broken.service"],
        )


def test_a_failing_unit_fails_the_gate_by_name(keel_image_variant, machine_factory):
    broken = machine_factory("broken", image=keel_image_variant([("broken-unit", BrokenUnit())]))
    broken.start()
    broken.wait_for_ssh()
    with pytest.raises(GateFailure) as failure:
        run_gate(broken)
    problems = failure.value.problems
    assert any(p.startswith("failed unit: keel-broken.service") for p in problems), problems
    assert any("'degraded'" in p for p in problems), problems
