"""Notices a guest whose virtual CPUs no longer make progress while it boots.

Seen once in CI (QEMU 7.2, TCG, two vCPUs): 1.1 s into the kernel's boot, both vCPUs sat
at the same instruction (a patched 5-byte NOP in the idle path) with interrupts off, for
as long as anyone looked; the console printed nothing more, and the harness waited its
whole boot timeout (600 s) for SSH. A healthy guest that prints nothing for a while is
either idle (its vCPUs halted) or running (their instruction pointers move).

:class:`StallWatch` starts sampling once the console has been quiet for ``quiet``
seconds: every ``every`` seconds it reads each vCPU's instruction pointer and halted
flag (QMP ``human-monitor-command`` ``info registers -a``, with TCG and KVM alike).
``samples`` equal samples in a row in which no vCPU is halted make a stall. Output on
the console starts over. :meth:`keel_harness.machine.Machine.wait_for_ssh` then boots
the machine once more from a fresh disk, if it never answered SSH before (its first
boot), and says so; a second stall, or one in a later boot, is a harness fault.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

QUIET_SECONDS = 60.0
"""Console silence after which the vCPUs are sampled."""
SAMPLES = 5
"""Equal samples in a row, no vCPU halted, that make a stall."""
EVERY_SECONDS = 2.0
"""Time between two samples."""

_CPU = re.compile(r"^CPU#(\d+)", re.M)
_RIP = re.compile(r"\b[RE]IP=([0-9a-fA-F]+)")
_HLT = re.compile(r"\bHLT=(\d)")


@dataclass(frozen=True)
class CpuState:
    """One vCPU at one moment: where it is, and whether it waits halted (idle)."""

    ip: int
    halted: bool


def parse_registers(text: str) -> tuple[CpuState, ...]:
    """The vCPUs in QEMU's ``info registers -a`` output (one ``CPU#n`` block each); a
    block without an instruction pointer or halted flag raises ValueError."""
    starts = [m.start() for m in _CPU.finditer(text)]
    if not starts:
        raise ValueError(f"no CPU# block in: {text[:200]!r}")
    cpus = []
    for begin, end in zip(starts, [*starts[1:], len(text)], strict=True):
        block = text[begin:end]
        ip, halted = _RIP.search(block), _HLT.search(block)
        if ip is None or halted is None:
            raise ValueError(f"no RIP/HLT in: {block[:200]!r}")
        cpus.append(CpuState(int(ip.group(1), 16), halted.group(1) == "1"))
    return tuple(cpus)


class StallWatch:
    """Polled while waiting for a boot; :meth:`poll` is true once the guest is stalled."""

    def __init__(
        self,
        sample: Callable[[], tuple[CpuState, ...]],
        console_size: Callable[[], int],
        *,
        quiet: float = QUIET_SECONDS,
        samples: int = SAMPLES,
        every: float = EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sample = sample
        self._console_size = console_size
        self.quiet, self.samples, self.every = quiet, samples, every
        self._clock = clock
        self._size = -1
        self._quiet_since = clock()
        self._next = 0.0
        self._last: tuple[CpuState, ...] | None = None
        self._streak = 0

    @property
    def last(self) -> tuple[CpuState, ...] | None:
        """The latest sample (for the report)."""
        return self._last

    def poll(self) -> bool:
        now = self._clock()
        size = self._console_size()
        if size != self._size:
            self._size, self._quiet_since = size, now
            self._last, self._streak = None, 0
            return False
        if now - self._quiet_since < self.quiet or now < self._next:
            return False
        self._next = now + self.every
        try:
            cpus = self._sample()
        except Exception:  # QMP busy or gone: no evidence either way
            self._last, self._streak = None, 0
            return False
        if any(cpu.halted for cpu in cpus):
            self._streak = 0
        elif cpus == self._last:
            self._streak += 1
        else:
            self._streak = 1
        self._last = cpus
        return self._streak >= self.samples

    def describe(self) -> str:
        """What the last samples showed, for the log and the error."""
        where = ", ".join(f"vCPU {i} at {c.ip:#x}" for i, c in enumerate(self._last or ()))
        return (
            f"no console output for {self._clock() - self._quiet_since:.0f} s and every vCPU "
            f"at the same instruction, not halted, in {self._streak} samples "
            f"{self.every:.0f} s apart ({where})"
        )
