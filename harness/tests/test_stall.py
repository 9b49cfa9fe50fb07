"""The stall check (keel_harness.stall) and what a failed test collects from a guest that
never came up (keel_harness.artifacts), without QEMU: parsed monitor output, a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keel_harness import artifacts
from keel_harness.stall import CpuState, StallWatch, parse_registers

# QEMU 7.2's `info registers -a` (abridged), as it read during the CI hang of 2026-12-07.
HUNG = """
CPU#0
RAX=0000000000000002 RBX=000000000000000a RCX=ffff89ba7ec22e80 RDX=0000000041169900
RIP=ffffffff86d46755 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
ES =0000 0000000000000000 00000000 00000000

CPU#1
RAX=0000000000000002 RBX=000000000000000a RCX=ffff89ba7ec22e80 RDX=0000000041169900
RIP=ffffffff86d46755 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
ES =0000 0000000000000000 00000000 00000000
"""


def test_the_monitor_output_gives_each_vcpu_its_place_and_halt_flag() -> None:
    assert parse_registers(HUNG) == (CpuState(0xFFFFFFFF86D46755, False),) * 2
    idle = HUNG.replace("HLT=0", "HLT=1", 1)
    assert parse_registers(idle)[0].halted
    assert not parse_registers(idle)[1].halted
    with pytest.raises(ValueError, match="no CPU#"):
        parse_registers("(qemu) error")
    with pytest.raises(ValueError, match="no RIP/HLT"):
        parse_registers("CPU#0\nRAX=0\n")


class Guest:
    """A fake guest: its console size and vCPU samples, on a fake clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.console = 100
        self.cpus: tuple[CpuState, ...] = (CpuState(0x1000, False), CpuState(0x1000, False))
        self.sampled = 0

    def sample(self) -> tuple[CpuState, ...]:
        self.sampled += 1
        return self.cpus

    def watch(self) -> StallWatch:
        return StallWatch(
            self.sample, lambda: self.console, quiet=60, samples=5, every=2, clock=lambda: self.now
        )


def run(guest: Guest, watch: StallWatch, seconds: float, step: float = 0.25) -> float | None:
    """Poll for ``seconds`` of fake time; the time the stall was seen, or None."""
    end = guest.now + seconds
    while guest.now < end:
        if watch.poll():
            return guest.now
        guest.now += step
    return None


def test_a_quiet_console_and_vcpus_that_do_not_move_make_a_stall() -> None:
    guest = Guest()
    watch = guest.watch()
    seen = run(guest, watch, 200)
    # sampled from 60 s of silence on, 2 s apart: the fifth equal sample at 68 s
    assert seen == pytest.approx(68.0)
    assert "vCPU 0 at 0x1000, vCPU 1 at 0x1000" in watch.describe()
    assert "in 5 samples 2 s apart" in watch.describe()


def test_console_output_or_a_halted_or_moving_vcpu_is_no_stall() -> None:
    guest = Guest()
    watch = guest.watch()
    assert run(guest, watch, 59) is None
    assert guest.sampled == 0  # nothing sampled while the console is not quiet long enough
    guest.console += 1  # it printed: the quiet starts over
    assert run(guest, watch, 60) is None
    guest.cpus = (CpuState(0x1000, True), CpuState(0x1000, False))  # one idles
    assert run(guest, watch, 60) is None
    assert guest.sampled > 5

    moving = Guest()
    watch = moving.watch()
    original = moving.sample

    def step() -> tuple[CpuState, ...]:
        moving.cpus = tuple(CpuState(c.ip + 1, False) for c in moving.cpus)
        return original()

    watch._sample = step  # type: ignore[method-assign]
    assert run(moving, watch, 300) is None


def test_a_failed_sample_is_no_evidence() -> None:
    guest = Guest()
    watch = guest.watch()
    fail = {"at": 64.0}
    original = guest.sample

    def flaky() -> tuple[CpuState, ...]:
        if guest.now == fail["at"]:
            raise OSError("QMP busy")
        return original()

    watch._sample = flaky  # type: ignore[method-assign]
    # samples at 60, 62 equal; 64 fails (streak reset); 66..74: five more equal ones
    assert run(guest, watch, 200) == pytest.approx(74.0)


class NeverUp:
    """A machine whose QEMU runs but whose guest never answered SSH in this boot."""

    name = "m"
    is_running = True
    boot_seconds = None

    def __init__(self, state: Path) -> None:
        self.state_dir = state
        self.config: Any = type("C", (), {"key": object()})()
        self.waited = 0

    def execute(self, command: str, timeout: float) -> tuple[int, str]:
        self.waited += 1  # the real one would wait the whole boot timeout for SSH
        raise AssertionError("must not be called")

    def wait_for_ssh(self, timeout: float | None = None) -> float:
        self.waited += 1
        raise AssertionError("must not be called")


def test_artifacts_of_a_guest_that_never_came_up_do_not_wait_for_it(tmp_path: Path) -> None:
    machine = NeverUp(tmp_path / "state")
    machine.state_dir.mkdir()
    (machine.state_dir / "console.log").write_text("pnp: PnP ACPI: found 5 devices\n")
    (folder,) = artifacts.collect([machine], tmp_path / "out")  # type: ignore[list-item]
    assert machine.waited == 0
    assert (folder / "console.log").read_text().startswith("pnp:")
    for name, _ in artifacts.GUEST_FILES:
        assert "SSH never answered in this boot" in (folder / name).read_text()


def test_artifacts_stop_trying_after_the_first_guest_file_fails(tmp_path: Path) -> None:
    machine = NeverUp(tmp_path / "state")
    machine.state_dir.mkdir()
    machine.boot_seconds = 12.0  # type: ignore[assignment]
    calls: list[float | None] = []

    def lost(timeout: float | None = None) -> float:
        calls.append(timeout)
        raise OSError("no route to the guest")

    machine.wait_for_ssh = lost  # type: ignore[method-assign]
    (folder,) = artifacts.collect([machine], tmp_path / "out")  # type: ignore[list-item]
    assert calls == [artifacts.RECONNECT_SECONDS]
    for name, _ in artifacts.GUEST_FILES:
        assert "no route to the guest" in (folder / name).read_text()
