"""Reboot, crash and shutdown of a booted machine."""

from __future__ import annotations

import pytest

from keel_harness import Machine, run_gate

pytestmark = pytest.mark.vm


def test_reboot_comes_back_on_a_new_boot_and_passes_the_gate(machine: Machine):
    before = machine.boot_id()
    machine.reboot()
    assert machine.boot_id() != before
    run_gate(machine)


def test_crash_then_start_boots_again_and_passes_the_gate(machine: Machine):
    before = machine.boot_id()
    machine.succeed("echo survived > /var/tmp/keel-harness-marker && sync")
    machine.crash()
    assert not machine.is_running
    machine.start()
    machine.wait_for_ssh()
    assert machine.boot_id() != before
    assert machine.succeed("cat /var/tmp/keel-harness-marker").strip() == "survived"
    run_gate(machine)


def test_shutdown_powers_off(machine: Machine):
    machine.shutdown()
    assert not machine.is_running
