"""An image with the store and the supervisor boots with working daemons (Python in /usr).

The default definition built with the ``store`` and ``supervisor`` components (through a
variant plugin), booted under QEMU, through the gate with every health check (the units
exist, so the store's check applies). ``etcdctl`` on the host talks to the guest's
keel-store through an SSH port forward.

In ``smoke``: the image is the one the supervisor's VM test builds anyway (about 2 min
cold), so this costs CI one more boot (about 75 s).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel_harness import Machine
from keel_harness.pytest_plugin import boot_and_gate

pytestmark = [pytest.mark.vm, pytest.mark.smoke]


@pytest.fixture
def py_machine(machine_factory, py_image: Path, request: pytest.FixtureRequest) -> Machine:
    """py_image (tests/integration/conftest.py) booted and through the gate."""
    return boot_and_gate(machine_factory("pydist", image=py_image), request)


@pytest.fixture
def store_forward(py_machine: Machine) -> Iterator[int]:
    """A host port on 127.0.0.1 forwarded (ssh -L) to the guest's 127.0.0.1:2379."""
    with py_machine.tunnel_to_guest(2379) as port:
        yield port


def test_daemons_run_and_the_store_answers_etcdctl(
    py_machine: Machine, store_forward: int, request: pytest.FixtureRequest
):
    m = py_machine
    assert (
        m.succeed("keel --version").strip()
        == m.succeed(
            "python3 -c 'import keel_core; print(\"keel, version\", keel_core.__version__)'"
        ).strip()
    )
    plugins = m.succeed("keel plugins")
    for name in ("core", "store", "supervisor"):
        assert name in plugins.split(), plugins
    assert m.succeed("keel slot current").strip() == "A"  # the shell subcommand still wins
    for unit in ("keel-store.service", "keel-supervisor.service"):
        assert m.succeed(f"systemctl is-active {unit}").strip() == "active"
    # the store keeps its data on ROOT, as its own user
    assert m.succeed("stat -c %U /var/lib/keel-store").strip() == "keel-store"
    assert m.succeed("findmnt -n -o TARGET --target /var/lib/keel-store").strip() == "/"
    # python3 finds the packages without the wrappers (the store's unit runs python3 -m)
    m.succeed("python3 -I -c 'import keel_store.daemon, keel_supervisor, grpc, pydantic'")
    # /usr is read-only: the pycs shipped must be the ones used (none written, none stale)
    m.succeed("python3 -I -X importtime -c 'import keel_supervisor.cli' 2>/dev/null")

    etcdctl = shutil.which("etcdctl")
    assert etcdctl, "etcdctl is missing on the host (apt-get install etcd-client)"
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    endpoint = f"--endpoints=127.0.0.1:{store_forward}"
    put = subprocess.run(
        [etcdctl, endpoint, "put", "/keel/test/pydist", "from-the-host"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert put.returncode == 0, put.stderr
    assert put.stdout.strip() == "OK"
    get = subprocess.run(
        [etcdctl, endpoint, "get", "--print-value-only", "/keel/test/pydist"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert get.returncode == 0, get.stderr
    assert get.stdout.strip() == "from-the-host"
    # and the guest's own view agrees (its health module reads it linearizably)
    m.succeed("python3 -m keel_store.health 127.0.0.1:2379")
    # the store also listens on the guest's own address (other nodes reach it there)
    address = m.succeed("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1").split()
    assert address, "the guest has no global IPv4 address"
    m.succeed(f"python3 -m keel_store.health {address[0]}:2379")
    # the store may give its snapshot children back their nice 0 (they start idle)
    pid = m.succeed("systemctl show -p MainPID --value keel-store.service").strip()
    nice = m.succeed(f"grep 'Max nice priority' /proc/{pid}/limits").split()
    assert nice[3:5] == ["20", "20"], nice
    for unit in ("keel-store.service", "keel-supervisor.service"):
        pid = m.succeed(f"systemctl show -p MainPID --value {unit}").strip()
        rss = m.succeed(f"grep VmRSS /proc/{pid}/status").split()[1]
        request.node.user_properties.append((f"rss_kib_{unit}", int(rss)))
