"""Fast checks of the harness's pure parts: retry, sizing, console, config, keys, images."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from keel_core import plugins
from keel_core.hookspecs import hookimpl
from keel_core.types import HealthCheck
from keel_harness import artifacts, console, gate, images, network, provision, ssh
from keel_harness.errors import HarnessError, RetryTimeout
from keel_harness.retry import retry
from keel_harness.run import vcpus_per_machine


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_retry_returns_the_first_truthy_result():
    clock = FakeClock()
    answers = iter([None, False, "done"])
    assert (
        retry(lambda last: next(answers), timeout=10, what="x", clock=clock, sleep=clock.sleep)
        == "done"
    )
    assert clock.now == 2.0


def test_retry_times_out_and_tells_the_last_try():
    clock = FakeClock()
    seen: list[bool] = []

    def never(last: bool) -> None:
        seen.append(last)

    with pytest.raises(RetryTimeout, match="waiting for the moon"):
        retry(never, timeout=5, what="the moon", clock=clock, sleep=clock.sleep)
    assert seen[-1] is True
    assert seen.count(True) == 1
    assert 4 <= len(seen) <= 6


def test_retry_lets_a_check_raise_at_once():
    with pytest.raises(ValueError, match="never"):
        retry(lambda last: (_ for _ in ()).throw(ValueError("never")), timeout=5, what="x")


@pytest.mark.parametrize(
    ("machines", "workers", "cores", "expected"),
    [(1, 1, 2, 2), (3, 1, 2, 1), (1, 2, 2, 1), (2, 1, 8, 4), (1, 1, 1, 1), (5, 4, 2, 1)],
)
def test_vcpus_keep_the_total_within_the_cores(machines, workers, cores, expected):
    assert vcpus_per_machine(machines, workers, cores) == expected


def test_console_trouble_is_found_and_named():
    text = (
        "[    1.0] ok\n[   12.3] Kernel panic - not syncing: VFS: Unable to mount root fs\n"
        "[   13.0] foo[123]: segfault at 0 ip 000 sp 000 error 4\n"
        "You are in emergency mode. After logging in, type...\n"
    )
    found = console.find_trouble(text)
    names = [f.split(":")[0] for f in found]
    assert names == ["kernel panic", "segfault", "emergency shell"]
    assert "VFS: Unable to mount root fs" in found[0]
    assert console.find_trouble("Reached target multi-user.target\nKEEL-BOOT-OK A\n") == []


def test_a_soft_lockup_is_trouble_once_it_lasts_a_minute():
    short = "[   40.1] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [systemd:1]\n"
    long = "[  300.2] watchdog: BUG: soft lockup - CPU#1 stuck for 104s! [kworker/1:1H:70]\n"
    assert not any(t.startswith("soft lockup") for t in console.find_trouble(short))
    found = [t for t in console.find_trouble(short + long) if t.startswith("soft lockup")]
    assert found == ["soft lockup: " + long.strip()]
    minute = long.replace("104s", "60s")
    assert any(t.startswith("soft lockup") for t in console.find_trouble(minute))
    under = long.replace("104s", "59s")
    assert not any(t.startswith("soft lockup") for t in console.find_trouble(under))


def test_console_log_reads_from_the_mark(tmp_path: Path):
    log = console.ConsoleLog(tmp_path / "console.log")
    assert log.text() == ""
    log.path.write_bytes(b"first boot\r\n")
    log.mark()
    with log.path.open("ab") as f:
        f.write(b"second boot\r\nready\r\n")
    assert log.text() == "second boot\nready\n"
    assert log.search("ready") is not None
    assert log.search("first") is None
    assert "first boot" in log.text(whole=True)


def test_config_document_follows_the_contract(tmp_path: Path):
    nic = provision.StaticInterface("52:54:00:01:00:01", "192.0.2.11/24")
    doc = provision.config_document("node1", ["ssh-ed25519 AAAA k"], [nic])
    path = provision.write_config(tmp_path / "c.json", doc)
    assert json.loads(path.read_text()) == {
        "hostname": "node1",
        "users": [{"name": "core", "ssh_authorized_keys": ["ssh-ed25519 AAAA k"]}],
        "network": {"interfaces": [{"mac": "52:54:00:01:00:01", "address": "192.0.2.11/24"}]},
    }


def test_private_addresses_come_from_test_net_1():
    assert str(network.private_address(0)) == "192.0.2.11/24"
    assert str(network.private_address(2).ip) == "192.0.2.13"
    with pytest.raises(HarnessError):
        network.private_address(300)


def test_generated_key_is_private_ed25519_and_reused(tmp_path: Path):
    pair = ssh.generate_key(tmp_path / "id_ed25519")
    assert pair.public.startswith("ssh-ed25519 ")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    key = paramiko.Ed25519Key.from_private_key_file(str(pair.private))
    assert pair.public.split()[1] == key.get_base64()
    assert ssh.generate_key(tmp_path / "id_ed25519") == pair


def test_image_resolution(tmp_path: Path):
    (tmp_path / "img").mkdir()
    with pytest.raises(HarnessError, match=r"neither disk\.qcow2 nor disk\.raw"):
        images.resolve(tmp_path / "img")
    (tmp_path / "img" / "disk.raw").write_bytes(b"")
    assert images.resolve(tmp_path / "img") == tmp_path / "img" / "disk.raw"
    (tmp_path / "img" / "disk.qcow2").write_bytes(b"")
    assert images.resolve(tmp_path / "img") == tmp_path / "img" / "disk.qcow2"
    with pytest.raises(HarnessError, match="no such image"):
        images.resolve(tmp_path / "missing.yaml")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(HarnessError, match="expected an image directory"):
        images.resolve(tmp_path / "notes.txt")


def test_artifact_folder_names_are_path_safe(tmp_path: Path):
    folder = artifacts.test_dir(tmp_path, "tests/a.py::test_x[3-uefi]")
    assert folder.parent == tmp_path
    assert "/" not in folder.name
    assert "[" not in folder.name


class ThirdParty:
    @hookimpl
    def keel_health_checks(self):
        return [HealthCheck("third-party", "test -e /run/ok", "a check from outside")]


def test_hook_checks_include_core_and_third_party_checks():
    pm = plugins.load(extra=[("third", ThirdParty())])
    names = [c.name for c in gate.hook_checks(pm)]
    assert "third-party" in names
    assert "system-running" in names


class FakeGuest:
    """Answers the gate's commands from canned output (the real thing runs in VM tests)."""

    def __init__(self, facts: dict[str, str], console_text: str = "") -> None:
        self.facts = facts
        self.console = console.ConsoleLog(Path("/nonexistent/console.log"))
        self.console_text = console_text
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 0) -> tuple[int, str, str]:
        self.commands.append(command)
        noise = "Warning: something on stderr\n"  # must not leak into the parsed facts
        if command.startswith("echo '@@keel-gate:"):
            return 0, "".join(f"@@keel-gate:{k}\n{v}" for k, v in self.facts.items()), noise
        if command.startswith("journalctl -b -u"):
            return 0, "keel-broken.service: Main process exited, status=1/FAILURE\n", noise
        if command.startswith("sleep"):
            return 0, self.facts["activating"], noise
        raise AssertionError(f"unexpected command {command}")


HEALTHY = {
    "state": "running\n",
    "failed": "",
    "activating": "dev-dm\\x2d0.device loaded activating tentative /dev/dm-0\n",
    "usr": "ro,relatime\n",
    "machine-id": "2a1008b5ca8249f09bb66d0fe03085bc\n",
    "kernel": "[    0.0] Linux version 6.1\n",
}


def test_gate_finds_nothing_on_a_healthy_machine(monkeypatch: pytest.MonkeyPatch):
    guest = FakeGuest(HEALTHY)
    monkeypatch.setattr(guest.console, "text", lambda whole=False: "KEEL-BOOT-OK A\n")
    assert gate.builtin_problems(guest) == []  # type: ignore[arg-type]
    assert len(guest.commands) == 1  # one round trip when all is well


def test_gate_names_every_problem(monkeypatch: pytest.MonkeyPatch):
    guest = FakeGuest(
        {
            "state": "degraded\n",
            "failed": "keel-broken.service loaded failed failed Fails on purpose\n",
            "activating": "looping.service loaded activating auto-restart Loops\n",
            "usr": "rw,relatime\n",
            "machine-id": "uninitialized\n",
            "kernel": "[ 3.1] foo[99]: segfault at 0 ip 0 sp 0 error 4 in foo\n",
        }
    )
    monkeypatch.setattr(
        guest.console, "text", lambda whole=False: "Kernel panic - not syncing: x\n"
    )
    problems = gate.builtin_problems(guest, settle=0)  # type: ignore[arg-type]
    assert problems[0] == "system state is 'degraded', not 'running'"
    assert problems[1].startswith("failed unit: keel-broken.service\n")
    assert "status=1/FAILURE" in problems[1]
    assert problems[2] == "unit stuck activating: looping.service"
    assert problems[3].startswith("console: kernel panic: Kernel panic - not syncing")
    assert problems[4].startswith("console: segfault: ")
    assert problems[5] == "/usr is not mounted read-only (options: rw,relatime)"
    assert problems[6] == "machine-id is not set: 'uninitialized'"
    assert len(problems) == 7


class ShellGuest:
    """Runs the gate's commands with the host's real /bin/sh, with a stand-in systemctl.

    The stand-in knows exactly the units in ``installed`` (this host runs no systemd);
    VM tests cover the real systemctl.
    """

    def __init__(self, tmp_path: Path, installed: set[str]) -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(parents=True)
        cases = " | ".join(installed) or "__none__"
        (bin_dir / "systemctl").write_text(
            f'#!/bin/sh\n[ "$1" = cat ] || exit 2\ncase "$2" in {cases}) exit 0;; esac\nexit 1\n'
        )
        (bin_dir / "systemctl").chmod(0o755)
        self.env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run(self, command: str, timeout: float = 0) -> tuple[int, str, str]:
        proc = subprocess.run(
            ["/bin/sh", "-c", command], capture_output=True, text=True, env=self.env, check=False
        )
        return proc.returncode, proc.stdout, proc.stderr


def test_component_checks_apply_only_where_their_unit_is_installed(tmp_path: Path):
    checks = [
        HealthCheck("store-healthy", "echo store down; exit 1", "store", unit="keel-store.service"),
        HealthCheck("everywhere", "echo broken; exit 1", "applies to every machine"),
        HealthCheck("absent-but-exit-77", "exit 77", "77 from a check without a unit is a failure"),
    ]
    without_store = gate.health_problems(ShellGuest(tmp_path / "a", set()), checks)  # type: ignore[arg-type]
    assert [p.split(" failed")[0] for p in without_store] == [
        "health check 'everywhere'",
        "health check 'absent-but-exit-77'",
    ]
    with_store = gate.health_problems(
        ShellGuest(tmp_path / "b", {"keel-store.service"}),
        checks,  # type: ignore[arg-type]
    )
    assert with_store[0] == "health check 'store-healthy' failed (exit 1): store\nstore down"
    assert len(with_store) == 3


def test_machine_forwards_pick_host_ports_and_name_missing_ones(tmp_path: Path):
    from keel_harness.machine import Machine, MachineConfig

    key = ssh.generate_key(tmp_path / "key")
    config = MachineConfig("m1", kernel=tmp_path / "vmlinuz", key=key, forwards=[8080])
    m = Machine(config, tmp_path / "m1")
    spec = m._spec()
    (user,) = spec.nics
    host = m.forwarded_port(8080)
    assert user.forwards == ((host, 8080),)
    assert host not in (0, m.ssh_port)
    with pytest.raises(HarnessError, match="guest port 80 is not forwarded"):
        m.forwarded_port(80)


class _Listener:
    """A loopback server that does ``behaviour`` with every connection, like QEMU's hostfwd
    in front of a guest: ``silent`` (no address yet), ``close`` (nothing listens), ``ssh``."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.accepted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.behaviour == "close":
                conn.close()
            elif self.behaviour == "ssh":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                self.held.append(conn)
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("behaviour", ["silent", "close", "ssh"])
def test_banner_probe_tells_the_guest_states_apart_quickly(behaviour: str):
    listener = _Listener(behaviour)
    probe = ssh.BannerProbe(listener.port, period=0.05, quiet_period=0.05, hold=0.3, pool=3)
    try:
        start = time.monotonic()
        found = False
        while not found and time.monotonic() - start < 1.0:
            found = probe.poll(0.05)
        assert found is (behaviour == "ssh")
        assert probe.answered is (behaviour != "silent")
        if behaviour == "ssh":
            assert time.monotonic() - start < 0.5
        else:
            # A new probe every period, never more than the pool open at once.
            assert listener.accepted >= 5
            assert len(probe._open) <= 3
    finally:
        probe.close()
        listener.close()
    assert not probe._open


def test_banner_probe_keeps_one_probe_open_once_the_guest_has_its_address():
    """After the address is known, a slow sshd is not sent a second connection at once."""
    listener = _Listener("silent")
    known = {"address": False}
    probe = ssh.BannerProbe(
        listener.port,
        address_known=lambda: known["address"],
        period=0.05,
        quiet_period=0.05,
        hold=5.0,
        answered_hold=5.0,
        pool=3,
    )
    try:
        for _ in range(10):
            probe.poll(0.02)
        assert len(probe._open) == 3  # before: up to the pool
        known["address"] = True
        for _ in range(10):
            probe.poll(0.02)
        assert len(probe._open) == 1  # the earlier ones dropped, one fresh probe waiting
        time.sleep(0.8)  # silent for longer than second_after: a second one may go
        for _ in range(5):
            probe.poll(0.02)
        assert len(probe._open) == 2
    finally:
        probe.close()
        listener.close()


def test_banner_probe_keeps_a_silent_connection_that_speaks_later():
    """A slow sshd (banner after the first wait) is not given up on: its connection is kept."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def slow() -> None:
        conn, _ = server.accept()
        time.sleep(0.4)
        conn.sendall(b"SSH-2.0-slow\r\n")
        time.sleep(1)
        conn.close()

    threading.Thread(target=slow, daemon=True).start()
    probe = ssh.BannerProbe(port, period=10, quiet_period=10, hold=2.0, pool=1)
    try:
        assert not probe.poll(0.1)
        start = time.monotonic()
        found = False
        while not found and time.monotonic() - start < 2.0:
            found = probe.poll(0.1)
        assert found
    finally:
        probe.close()
        server.close()


def _pcap(*frames: bytes) -> bytes:
    import struct

    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 64, 1)
    for frame in frames:
        out += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    return out


GUEST = bytes.fromhex("525400000001")
SLIRP = bytes.fromhex("52550a000202")


def _ipv4(src_mac: bytes, src: str, dst: str, sport: int, dport: int) -> bytes:
    import socket as s
    import struct

    ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + s.inet_aton(src) + s.inet_aton(dst)
    return b"\xff" * 6 + src_mac + b"\x08\x00" + ip + struct.pack("!HH", sport, dport)


def test_address_watch_sees_dhcp_answers_and_guest_addresses(tmp_path: Path):
    from keel_harness import netwatch

    arp_request = b"\xff" * 6 + SLIRP + b"\x08\x06" + bytes(8) + SLIRP + bytes([10, 0, 2, 2])
    discover = _ipv4(GUEST, "0.0.0.0", "255.255.255.255", 68, 67)
    offer = _ipv4(SLIRP, "10.0.2.2", "10.0.2.15", 67, 68)
    dump = tmp_path / "user-net.pcap"
    dump.write_bytes(_pcap(arp_request, discover))
    watch = netwatch.AddressWatch(dump, "52:54:00:00:00:01")
    assert not watch()
    dump.write_bytes(_pcap(arp_request, discover, offer)[:-10])  # QEMU still writing it
    assert not watch()
    dump.write_bytes(_pcap(arp_request, discover, offer))
    assert watch()
    static = _ipv4(GUEST, "10.0.2.15", "10.0.2.2", 22, 40000)
    dump.write_bytes(_pcap(discover, static))
    assert netwatch.AddressWatch(dump, "52:54:00:00:00:01")()
    # A later boot reads from its mark on: the first boot's answer does not count.
    dump.write_bytes(_pcap(offer, discover))
    mark = len(_pcap(offer))
    assert not netwatch.AddressWatch(dump, "52:54:00:00:00:01", mark)()
