"""Container networking: a Linux bridge, one veth pair per container, and addresses.

Every container on the ``bridge`` network gets a network namespace
(``/run/netns/keel-<id>``), a veth pair whose outer end joins the bridge and whose inner
end is ``eth0`` with the next free address of the bridge's private subnet; the bridge
holds the gateway address. Containers on the same bridge reach each other directly, and
with forwarding and masquerading on (``outbound=True``) the outside of the node.
Addresses are leased in ``<state>/network/<bridge>.json`` under a file lock, so several
supervisors' tools never hand out one address twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from keel_supervisor.model import SupervisorError

NETNS_DIR = Path("/run/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip``; a failure raises a :class:`SupervisorError` with its message."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SupervisorError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Bridge:
    """A bridge and its subnet; the first host address is the gateway."""

    name: str = "keel0"
    subnet: str = "10.88.0.0/16"
    state_dir: Path = Path("/var/lib/keel/network")
    outbound: bool = True

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The subnet as an object."""
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The bridge's own address."""
        return str(next(self.network.hosts()))

    def ensure(self) -> None:
        """Create the bridge if needed, give it the gateway address, bring it up."""
        if len(self.name) > 15:
            raise SupervisorError(f"bridge name {self.name!r} is longer than 15 characters")
        if ip("link", "show", self.name, check=False).returncode != 0:
            ip("link", "add", self.name, "type", "bridge")
        cidr = f"{self.gateway}/{self.network.prefixlen}"
        if cidr not in ip("-o", "addr", "show", "dev", self.name).stdout:
            ip("addr", "add", cidr, "dev", self.name)
        ip("link", "set", self.name, "up")
        if self.outbound:
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
            rule = ["POSTROUTING", "-s", self.subnet, "!", "-o", self.name, "-j", "MASQUERADE"]
            if (
                subprocess.run(
                    ["iptables", "-t", "nat", "-C", *rule], capture_output=True, check=False
                ).returncode
                != 0
            ):
                subprocess.run(
                    ["iptables", "-t", "nat", "-A", *rule], capture_output=True, check=False
                )

    def remove(self) -> None:
        """Delete the bridge and its lease file (tests; a node keeps its bridge)."""
        ip("link", "del", self.name, check=False)
        if self.outbound:
            rule = ["POSTROUTING", "-s", self.subnet, "!", "-o", self.name, "-j", "MASQUERADE"]
            subprocess.run(["iptables", "-t", "nat", "-D", *rule], capture_output=True, check=False)
        (self.state_dir / f"{self.name}.json").unlink(missing_ok=True)
        (self.state_dir / f"{self.name}.lock").unlink(missing_ok=True)

    # -- addresses -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _leases(self) -> Iterator[dict[str, str]]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / f"{self.name}.json"
        with open(self.state_dir / f"{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            leases: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
            yield leases
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(leases, indent=1, sort_keys=True))
            tmp.replace(path)

    def allocate(self, owner: str) -> str:
        """The address leased to ``owner``, leasing the lowest free one if it has none."""
        with self._leases() as leases:
            for address, holder in leases.items():
                if holder == owner:
                    return address
            for host in self.network.hosts():
                address = str(host)
                if address != self.gateway and address not in leases:
                    leases[address] = owner
                    return address
        raise SupervisorError(f"no free address left in {self.subnet} on bridge {self.name}")

    def release(self, owner: str) -> None:
        """Give back every address leased to ``owner``."""
        with self._leases() as leases:
            for address in [a for a, h in leases.items() if h == owner]:
                del leases[address]

    # -- container endpoints --------------------------------------------------------------
    def attach(self, container_id: str, address: str) -> Path:
        """Create the container's namespace and veth pair; returns the namespace path."""
        ns = f"keel-{container_id[:12]}"
        path = NETNS_DIR / ns
        if (
            path.exists()
            and ip("-n", ns, "-o", "addr", "show", "dev", "eth0", check=False).stdout.find(
                address + "/"
            )
            >= 0
        ):
            return path  # already set up (the supervisor restarted)
        if path.exists():
            ip("netns", "del", ns, check=False)
        ip("netns", "add", ns)
        host_end = f"vk{container_id[:11]}"
        ip("link", "del", host_end, check=False)
        try:
            ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", host_end, "master", self.name, "up")
            ip("-n", ns, "addr", "add", f"{address}/{self.network.prefixlen}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "route", "add", "default", "via", self.gateway)
        except SupervisorError:
            self.detach(container_id)
            raise
        return path

    @staticmethod
    def detach(container_id: str) -> None:
        """Remove the container's namespace (its veth pair goes with it)."""
        ip("netns", "del", f"keel-{container_id[:12]}", check=False)
        ip("link", "del", f"vk{container_id[:11]}", check=False)


def network_release(bridge: Bridge, container_id: str) -> None:
    """Take down whatever network a container had and give back its address."""
    Bridge.detach(container_id)
    bridge.release(container_id)
