"""Several machines on one private segment that only they share."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

from keel_harness import qemu
from keel_harness.machine import Machine, MachineConfig, PrivateLink
from keel_harness.network import PrivateSegment, private_address

# One ICMP echo for images without ping(8), in Perl (perl-base is in every Debian system);
# raw socket with protocol number 1, because minimal images have no /etc/protocols.
_PERL_PING = """
use Socket;
my $dst = inet_aton($ARGV[0]) or die "bad address\n";
socket(my $s, PF_INET, SOCK_RAW, 1) or die "raw socket: $!\n";
my $id = $$ & 0xffff;
my $data = "keel-harness-ping!";
my $sum = 0;
$sum += $_ for unpack("n*", pack("CCnnn", 8, 0, 0, $id, 1) . $data);
$sum = ($sum >> 16) + ($sum & 0xffff);
$sum += $sum >> 16;
send($s, pack("CCnnn", 8, 0, ~$sum & 0xffff, $id, 1) . $data, 0, sockaddr_in(0, $dst))
  or die "send: $!\n";
my $end = time + 5;
while (time < $end) {
  my $rin = "";
  vec($rin, fileno($s), 1) = 1;
  select(my $rout = $rin, undef, undef, 1) or next;
  my $from = recv($s, my $buf, 1500, 0) or next;
  my (undef, $addr) = sockaddr_in($from);
  my $ihl = (ord(substr($buf, 0, 1)) & 15) * 4;
  my ($type, undef, undef, $rid) = unpack("CCnn", substr($buf, $ihl));
  if ($addr eq $dst && $type == 0 && $rid == $id) { print "reply from $ARGV[0]\n"; exit 0 }
}
exit 1;
"""


def ping_command(address: str) -> str:
    """A shell command that sends one ICMP echo to ``address`` and succeeds on the reply."""
    addr = shlex.quote(address)
    return (
        f"if command -v ping >/dev/null; then ping -c 1 -W 5 {addr}; "
        f"else perl -e {shlex.quote(_PERL_PING)} {addr}; fi"
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
