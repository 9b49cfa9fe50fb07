"""Several machines on one private segment that only they share."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from keel_harness import qemu
from keel_harness.errors import HarnessError
from keel_harness.machine import Machine, MachineConfig, PrivateLink
from keel_harness.network import PrivateSegment, private_address

# Minimal images have no ping(8) (nor perl or python to send ICMP with): the harness then
# brings the host's static busybox (Debian busybox-static) into the guest's /run.
GUEST_BUSYBOX = "/run/keel-harness/busybox"


def host_busybox() -> Path:
    """The host's busybox binary (static in Debian's busybox-static)."""
    found = shutil.which("busybox")
    if found is None:
        raise HarnessError("busybox is not installed (Debian package busybox-static)")
    return Path(found)


def ping_command(address: str) -> str:
    """A shell command that sends ICMP echoes to ``address`` and succeeds on a reply."""
    addr = shlex.quote(address)
    return (
        f"if command -v ping >/dev/null; then ping -c 3 -W 5 {addr}; "
        f"else {GUEST_BUSYBOX} ping -c 3 -W 5 {addr}; fi"
    )


class Cluster:
    """``n`` machines ``node1..nodeN``, each with a private address 192.0.2.11.. on a vde hub."""

    def __init__(
        self,
        size: int,
        state_dir: Path,
        make_config: Callable[[str, int], MachineConfig],
        segment_id: int = 1,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one machine, not {size}")
        self.segment = PrivateSegment(state_dir / "switch")
        self.machines: list[Machine] = []
        for i in range(size):
            name = f"node{i + 1}"
            config = make_config(name, i)
            config.private = PrivateLink(
                self.segment.socket, qemu.mac_address(segment_id, i + 1), str(private_address(i))
            )
            self.machines.append(Machine(config, state_dir / name))

    def __iter__(self) -> Iterator[Machine]:
        return iter(self.machines)

    def __len__(self) -> int:
        return len(self.machines)

    def __getitem__(self, index: int) -> Machine:
        return self.machines[index]

    def address(self, machine: Machine) -> str:
        """The private address (without prefix) of ``machine``."""
        assert machine.config.private is not None
        return machine.config.private.address.split("/")[0]

    def ping(self, source: Machine, target: Machine) -> str:
        """``source`` pings ``target``'s private address; fails the test if no reply comes."""
        if source.execute("command -v ping || test -x " + GUEST_BUSYBOX, timeout=60)[0] != 0:
            source.copy_from_host(host_busybox(), GUEST_BUSYBOX, mode=0o755)
        return source.succeed(ping_command(self.address(target)), timeout=60)

    def start(self) -> None:
        """Start the hub, then every machine (they boot in parallel)."""
        if not self.segment.running:
            self.segment.start()
        for machine in self.machines:
            machine.start()

    def wait_for_ssh(self) -> None:
        """Wait until every machine answers on SSH."""
        for machine in self.machines:
            machine.wait_for_ssh()

    def stop(self) -> None:
        """Stop every machine, then the hub."""
        for machine in self.machines:
            machine.stop()
        self.segment.stop()
