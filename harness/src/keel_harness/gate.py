"""The gate every machine passes after it boots, as kola's CheckMachine does.

Built in: systemd reached ``running``; no failed unit; nothing stuck ``activating``; no
kernel panic, oops, segfault or emergency shell on the console (or in the kernel log);
``/usr`` read-only; a machine-id of its own. Then every check plugins return from the
``keel_health_checks`` hook, run in the guest as root. All problems are collected and
reported together, each named, so one run shows everything that is wrong.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from keel_core import plugins
from keel_core.types import NOT_APPLICABLE, HealthCheck
from keel_harness.console import find_trouble
from keel_harness.errors import GateFailure, HarnessError

if TYPE_CHECKING:
    from keel_harness.machine import Machine

SETTLE_SECONDS = 30.0
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")


def hook_checks(pm: plugins.KeelPluginManager | None = None) -> list[HealthCheck]:
    """Every :class:`HealthCheck` the loaded plugins return, in plugin order."""
    pm = pm or plugins.load()
    checks: list[HealthCheck] = plugins.collect(pm.hook.keel_health_checks())
    return checks


_SECTION = "@@keel-gate:"
_UNITS = "systemctl list-units --all --plain --no-legend --no-pager --state="


def _facts(machine: Machine, settle: float) -> dict[str, str]:
    """Everything the built-in checks need, in one round trip: ``{section: output}``."""
    sections = {
        "state": f"timeout {int(settle) + 240} systemctl is-system-running --wait",
        "failed": _UNITS + "failed",
        "activating": _UNITS + "activating",
        "usr": "findmnt -n -o OPTIONS /usr",
        "machine-id": "cat /etc/machine-id",
        "kernel": "journalctl -k -b --no-pager -o cat",
    }
    script = "; ".join(f"echo '{_SECTION}{name}'; {cmd}" for name, cmd in sections.items())
    _, out, _ = machine.run(script, timeout=settle + 360)
    facts: dict[str, str] = dict.fromkeys(sections, "")
    current = None
    for line in out.splitlines(keepends=True):
        if line.startswith(_SECTION):
            current = line[len(_SECTION) :].strip()
        elif current is not None:
            facts[current] += line
    return facts


def _units(listing: str) -> list[str]:
    """Unit names from ``systemctl list-units --plain --no-legend`` output."""
    units = []
    for line in listing.splitlines():
        fields = line.split()
        if not fields:
            continue
        # A "tentative" device (seen in mountinfo, not announced by udev, e.g. a dm device
        # an initramfs without udev set up) is "activating" with no job: nothing is stuck.
        if fields[0].endswith(".device") and fields[3:4] == ["tentative"]:
            continue
        units.append(fields[0])
    return units


def builtin_problems(machine: Machine, settle: float = SETTLE_SECONDS) -> list[str]:
    """Problems the harness's own checks find on ``machine`` (empty when it is healthy)."""
    problems: list[str] = []
    facts = _facts(machine, settle)
    state = facts["state"].strip().splitlines()[-1] if facts["state"].strip() else "(no answer)"
    if state != "running":
        problems.append(f"system state is {state!r}, not 'running'")
    for unit in _units(facts["failed"]):
        journal = machine.run(
            f"journalctl -b -u {shlex.quote(unit)} -n 5 --no-pager -o cat", timeout=60
        )[1]
        problems.append(f"failed unit: {unit}" + (f"\n{journal.rstrip()}" if journal else ""))
    stuck = _units(facts["activating"])
    if stuck:  # give them a moment: a unit may be legitimately starting (e.g. a timer job)
        _, later, _ = machine.run(f"sleep {min(settle, 10):.0f}; {_UNITS}activating", timeout=90)
        stuck = [u for u in _units(later) if u in stuck]
    problems += [f"unit stuck activating: {unit}" for unit in stuck]
    seen = set()
    for trouble in find_trouble(machine.console.text()) + find_trouble(facts["kernel"]):
        if trouble not in seen:
            seen.add(trouble)
            problems.append(f"console: {trouble}")
    options = facts["usr"].strip()
    if "ro" not in options.split(","):
        problems.append(f"/usr is not mounted read-only (options: {options or 'not a mount'})")
    machine_id = facts["machine-id"].strip()
    if not _MACHINE_ID.match(machine_id):
        problems.append(f"machine-id is not set: {machine_id!r}")
    return problems


def health_problems(machine: Machine, checks: Sequence[HealthCheck]) -> list[str]:
    """Run each plugin health check in the guest; one problem per check that fails."""
    problems = []
    for check in checks:
        status, out, err = machine.run(check.script(), timeout=check.timeout + 30)
        if status == 0 or (check.unit is not None and status == NOT_APPLICABLE):
            continue  # healthy, or about a unit this image does not have
        output = (out + err).strip()
        problems.append(
            f"health check {check.name!r} failed (exit {status})"
            + (f": {check.description}" if check.description else "")
            + (f"\n{output}" if output else "")
        )
    return problems


def run_gate(
    machine: Machine,
    checks: Sequence[HealthCheck] | None = None,
    settle: float = SETTLE_SECONDS,
) -> None:
    """Run the whole gate on a booted ``machine``; raise :class:`GateFailure` listing problems.

    ``checks`` defaults to the ``keel_health_checks`` of every installed plugin.
    """
    if not machine.is_running:
        raise HarnessError(f"{machine.name}: cannot gate a machine that is not running")
    machine.wait_for_ssh()
    problems = builtin_problems(machine, settle)
    problems += health_problems(machine, hook_checks() if checks is None else checks)
    if problems:
        raise GateFailure(machine.name, problems)
