"""The QEMU layer against a real kernel: a busybox guest that boots in seconds.

Marked ``vm``: each test starts real QEMU processes (TCG here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from keel_harness import accel, busybox, qemu, reaper, ssh
from keel_harness.cluster import Cluster
from keel_harness.console import find_trouble
from keel_harness.errors import GateFailure, GuestStalled, QemuError
from keel_harness.kernel import Kernel
from keel_harness.machine import Machine, MachineConfig

pytestmark = pytest.mark.vm


def config(kernel: Kernel, initrd: Path, name: str = "bb", **kw) -> MachineConfig:
    kw.setdefault("kernel_args", busybox.kernel_args())
    return MachineConfig(
        name=name, kernel=kernel.vmlinuz, initrd=initrd, memory_mib=256, accel="tcg", **kw
    )


def keyed(kernel: Kernel, initrd: Path, tmp_path: Path, kernel_args: list[str], **kw) -> Machine:
    """A busybox machine with an SSH key (it runs no SSH server: waiting for SSH waits
    for what else happens first)."""
    key = ssh.generate_key(tmp_path / "key")
    return Machine(config(kernel, initrd, key=key, kernel_args=kernel_args, **kw), tmp_path / "bb")


@pytest.fixture
def machines(request):
    made: list[Machine] = []
    yield made
    for m in made:
        m.stop()
    assert reaper.live() == [], "a QEMU process outlived its test"


def test_boots_reads_its_fw_cfg_config_and_powers_off(
    debian_kernel, busybox_initrd, tmp_path, machines
):
    m = Machine(
        config(
            debian_kernel, busybox_initrd, "alpha", kernel_args=busybox.kernel_args(then="poweroff")
        ),
        tmp_path / "alpha",
    )
    machines.append(m)
    m.start()
    assert m.is_running
    m.wait_for_console_text(r"KEEL-BUSYBOX-UP", timeout=120)
    config_line = m.wait_for_console_text(r"KEEL-CONFIG-BEGIN\n(.*)\n", timeout=30).group(1)
    assert '"hostname": "alpha"' in config_line
    m.wait_for_console_text(r"KEEL-READY alpha", timeout=30)
    assert m.wait_for_shutdown(timeout=60) == 0
    assert not m.is_running
    assert (m.state_dir / "disk.qcow2").exists() is False  # kernel boot: no disk at all


def test_crash_cuts_the_power_and_the_machine_starts_again(
    debian_kernel, busybox_initrd, tmp_path, machines
):
    m = Machine(config(debian_kernel, busybox_initrd), tmp_path / "bb")
    machines.append(m)
    m.start()
    m.wait_for_console_text(r"KEEL-DONE", timeout=120)
    pid = m._proc.pid
    m.crash()
    assert not m.is_running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    m.start()  # a crashed machine boots again; the console shows the second boot only
    assert m.console.search("KEEL-DONE") is None
    m.wait_for_console_text(r"KEEL-DONE", timeout=120)
    assert m.console.text(whole=True).count("KEEL-DONE") == 2


def test_kernel_panic_shows_on_the_console_as_trouble(
    debian_kernel, busybox_initrd, tmp_path, machines
):
    m = Machine(
        config(debian_kernel, busybox_initrd, kernel_args=busybox.kernel_args(then="panic")),
        tmp_path / "bb",
    )
    machines.append(m)
    m.start()
    m.wait_for_console_text(r"Kernel panic - not syncing", timeout=120)
    assert any(t.startswith("kernel panic:") for t in find_trouble(m.console.text()))


def test_waiting_for_ssh_stops_at_a_kernel_panic(debian_kernel, busybox_initrd, tmp_path, machines):
    """A guest that panics fails the test at once instead of timing out on SSH."""
    m = keyed(
        debian_kernel, busybox_initrd, tmp_path, [*busybox.kernel_args(then="panic"), "panic=0"]
    )
    machines.append(m)
    m.start()
    start = time.monotonic()
    with pytest.raises(GateFailure, match="kernel panic"):
        m.wait_for_ssh(timeout=300)
    assert time.monotonic() - start < 120


@pytest.mark.smoke
def test_a_stalled_first_boot_starts_again_and_a_second_stall_is_a_harness_error(
    debian_kernel, busybox_initrd, tmp_path, machines
):
    """vCPUs held still by QMP ``stop`` while the console is quiet (as a TCG livelock
    holds them): the first boot is started again, a stall of the second raises. Before
    each stop the guest spins, quiet, through a whole round of samples: a busy guest is
    no stall."""
    m = keyed(
        debian_kernel, busybox_initrd, tmp_path, busybox.kernel_args(then="spin"),
        stall_quiet_seconds=3.0,
    )  # fmt: skip
    machines.append(m)
    seen: list[tuple[float, int]] = []  # (start time of the boot stopped, stalls before)
    errors: list[BaseException] = []

    def stopper() -> None:
        # Until both boots are stopped, not "while m.is_running": QEMU is down for a
        # moment while the first boot is started again (a CI run lost that race).
        deadline = time.monotonic() + 280
        try:
            while len(seen) < 2 and time.monotonic() < deadline:
                if not m.is_running:
                    time.sleep(0.05)
                    continue
                if "KEEL-DONE" in m.console.text() and m.started_at not in [s for s, _ in seen]:
                    started = m.started_at
                    time.sleep(3.0 + 5 * 2.0 + 3.0)  # quiet, then 5 samples: no stall yet
                    if m.started_at != started:
                        raise AssertionError("a spinning guest was taken for a stalled one")
                    seen.append((started, len(m.stalled_boots)))
                    qemu.Qmp(m.state_dir / "qmp.sock").execute("stop")
                time.sleep(0.2)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=stopper, daemon=True)
    m.start()
    thread.start()
    with pytest.raises(GuestStalled, match="same instruction, not halted") as info:
        m.wait_for_ssh(timeout=300)
    thread.join(timeout=30)
    assert not errors, errors
    assert [stalls for _, stalls in seen] == [0, 1]
    assert len(m.stalled_boots) == 1
    assert "vCPU 0 at 0x" in m.stalled_boots[0]
    assert "bb:" in str(info.value)


def test_qemu_that_dies_is_a_harness_error_with_its_reason(
    debian_kernel, busybox_initrd, tmp_path, machines
):
    m = Machine(
        config(debian_kernel, busybox_initrd, extra_qemu=["-device", "no-such-device"]),
        tmp_path / "bb",
    )
    machines.append(m)
    with pytest.raises(QemuError, match="no-such-device") as info:
        m.start()
    assert "exited right after start" in str(info.value)


def test_three_machines_ping_each_other_on_the_private_segment(
    debian_kernel, busybox_initrd, tmp_path, machines
):
    addresses = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]

    def make(name: str, i: int) -> MachineConfig:
        peers = [a for a in addresses if a != addresses[i]]
        return config(
            debian_kernel,
            busybox_initrd,
            name,
            index=i,
            kernel_args=busybox.kernel_args(peers=peers),
        )

    cluster = Cluster(3, tmp_path / "c", make)
    machines.extend(cluster)
    try:
        cluster.start()
        for m in cluster:
            m.wait_for_console_text(r"KEEL-DONE", timeout=180)
        for i, m in enumerate(cluster):
            assert cluster.address(m) == addresses[i]
            text = m.console.text()
            for peer in addresses:
                if peer != addresses[i]:
                    assert f"PING-OK {m.name} -> {peer}" in text, text[-2000:]
    finally:
        cluster.stop()
    assert not cluster.segment.running


def test_private_segment_is_private_to_its_cluster(
    debian_kernel, busybox_initrd, tmp_path, machines
):
    """Two clusters with the same addresses do not see each other."""

    def make(peer: str):
        return lambda name, i: config(
            debian_kernel,
            busybox_initrd,
            name,
            kernel_args=busybox.kernel_args(peers=[peer], tries=20),
        )

    a = Cluster(1, tmp_path / "a", make("192.0.2.12"))
    b = Cluster(2, tmp_path / "b", make("192.0.2.12"), segment_id=2)
    machines.extend([*a, *b])
    try:
        a.start()
        b.start()
        b[0].wait_for_console_text(r"PING-OK node1 -> 192.0.2.12", timeout=180)
        a[0].wait_for_console_text(r"PING-FAIL node1 -> 192.0.2.12", timeout=240)
    finally:
        a.stop()
        b.stop()


def test_kvm_probe_is_bounded_and_its_verdict_cached(debian_kernel, tmp_path, monkeypatch):
    monkeypatch.delenv(accel.ACCEL_ENV, raising=False)
    start = time.monotonic()
    verdict = accel.choose(kernel=debian_kernel.vmlinuz, cache=tmp_path / "accel.txt", timeout=4)
    assert time.monotonic() - start < 4 + 10
    assert verdict in ("kvm", "tcg")
    start = time.monotonic()
    assert accel.choose(kernel=debian_kernel.vmlinuz, cache=tmp_path / "accel.txt") == verdict
    assert time.monotonic() - start < 1.0
    monkeypatch.setenv(accel.ACCEL_ENV, "tcg")
    assert accel.choose(kernel=debian_kernel.vmlinuz) == "tcg"


def test_probe_recognises_a_kernel_that_runs_and_one_that_does_not(debian_kernel, tmp_path):
    assert accel.kernel_runs("tcg", debian_kernel.vmlinuz, timeout=60) is True
    junk = tmp_path / "vmlinuz"
    junk.write_bytes(b"\0" * 4096)
    assert accel.kernel_runs("tcg", junk, timeout=8) is False


CHILD = textwrap.dedent(
    """
    import signal, time
    from keel_harness import busybox
    # Background jobs of a non-interactive shell start with SIGINT ignored; a terminal's
    # Ctrl-C reaches Python as KeyboardInterrupt, which is what this test is about.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pathlib import Path
    from keel_harness.kernel import debian_kernel
    from keel_harness.machine import Machine, MachineConfig
    k = debian_kernel()
    m = Machine(MachineConfig(name="child", kernel=k.vmlinuz, initrd=Path({initrd!r}),
                kernel_args=busybox.kernel_args(), memory_mib=256), Path({state!r}))
    m.start()
    print(m._proc.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.smoke
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"]
)
def test_no_qemu_survives_its_harness(busybox_initrd, tmp_path, sig):
    """Ctrl-C, a termination request or a hard kill of the harness take QEMU down too."""
    script = CHILD.format(initrd=str(busybox_initrd), state=str(tmp_path / "s"))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        qemu_pid = int(child.stdout.readline())
        os.kill(qemu_pid, 0)  # running
        child.send_signal(sig)
        child.wait(30)
        deadline = time.monotonic() + 15
        while _alive(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(qemu_pid), f"QEMU {qemu_pid} survived {sig.name} of its harness"
    finally:
        child.kill()
        child.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
