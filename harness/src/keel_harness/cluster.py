"""Several machines on one private segment that only they share."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

from keel_harness import qemu
from keel_harness.machine import Machine, MachineConfig, PrivateLink
from keel_harness.network import PrivateSegment, private_address

# ICMP echo for images without ping(8): Perl's core Net::Ping (perl is in Debian's base),
# or Python's raw sockets.
_PERL_PING = 'use Net::Ping; exit(Net::Ping->new("icmp", 5)->ping($ARGV[0]) ? 0 : 1)'

_PY_PING = """
import os, socket, struct, sys, time
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(5)
ident = os.getpid() & 0xFFFF
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
body = b"keel-harness-ping"
hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
s.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr + body + b"\\0"[: len(body) % 2]), ident, 1) + body,
         (dst, 0))
end = time.monotonic() + 5
while time.monotonic() < end:
    data, addr = s.recvfrom(1024)
    icmp = data[(data[0] & 15) * 4:]
    if addr[0] == dst and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        print("reply from", dst); sys.exit(0)
sys.exit(1)
"""


def ping_command(address: str) -> str:
    """A shell command that sends one ICMP echo to ``address`` and succeeds on the reply."""
    addr = shlex.quote(address)
    return (
        f"if command -v ping >/dev/null; then ping -c 1 -W 5 {addr}; "
        f"elif command -v perl >/dev/null; then perl -e {shlex.quote(_PERL_PING)} {addr}; "
        f"else python3 -c {shlex.quote(_PY_PING)} {addr}; fi"
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
        """``source`` pings ``target``'s private address once; fails the test if no reply."""
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
