"""The harness's own faults, kept apart from test failures.

A test fails when the system under test misbehaves (a unit failed, a command returned
non-zero: :class:`AssertionError`). The harness faults when it cannot run the test at all
(QEMU died or never started, SSH never came up): :class:`HarnessError`. The pytest plugin
reports harness faults as errors, not failures, so a broken machine is not mistaken for a
broken image and the other way round, as the NixOS driver's ``MachineError`` does.
"""

from __future__ import annotations


class HarnessError(Exception):
    """The harness could not do its job: the test's verdict is unknown, not negative."""


class QemuError(HarnessError):
    """QEMU refused to start or exited when it should be running.

    ``log`` is QEMU's own stderr (its reason), ``console`` the path of the serial log.
    """

    def __init__(self, machine: str, message: str, log: str = "", console: str = "") -> None:
        self.machine = machine
        self.log = log
        self.console = console
        detail = f"\nqemu said: {log.strip()}" if log.strip() else ""
        where = f"\nconsole log: {console}" if console else ""
        super().__init__(f"machine {machine}: {message}{detail}{where}")


class SshError(HarnessError):
    """The machine's SSH server could not be reached or refused the harness's key."""


class GuestStalled(HarnessError):
    """The guest's vCPUs stopped making progress while it booted (see :mod:`keel_harness.stall`)."""


class RetryTimeout(HarnessError, TimeoutError):
    """A ``wait_*`` gave up: the condition did not hold within its timeout."""


class CommandFailed(AssertionError):
    """A command in the guest exited with an unexpected status (a test failure)."""

    def __init__(self, machine: str, command: str, status: int, output: str) -> None:
        self.machine = machine
        self.command = command
        self.status = status
        self.output = output
        super().__init__(
            f"{machine}: command {command!r} exited with {status}\n{output.rstrip()}".rstrip()
        )


class GateFailure(AssertionError):
    """The after-boot gate found problems; ``problems`` lists each, named by its check."""

    def __init__(self, machine: str, problems: list[str]) -> None:
        self.machine = machine
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{machine} failed the gate:\n{lines}")
