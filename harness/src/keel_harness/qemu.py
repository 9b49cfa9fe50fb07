"""QEMU command lines for Keel machines, and a tiny QMP client to drive a running one.

:class:`QemuSpec` is plain data (what to boot and how); :func:`command` turns it into an
argv. Keeping the two apart lets unit tests check every safety rule on the argv (user
networking always ``restrict=on``, SSH forwarded on 127.0.0.1 only, no host NIC) without
starting anything.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel_harness import accel, netwatch
from keel_harness.errors import HarnessError

# Debian's 2 MB OVMF build (its variable store is too small for Secure Boot's key lists,
# which the harness does not use): under TCG it reached GRUB in 3.8 s where the 4 MB build
# took 4.2-4.7 s.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
FW_CFG_NAME = "opt/org.keel/config"


@dataclass(frozen=True)
class Nic:
    """One virtio NIC: ``user`` (SSH port forward, restricted) or ``vde`` (a private segment)."""

    kind: str
    mac: str
    ssh_port: int = 0
    """Host port on 127.0.0.1 forwarded to the guest's 22 (``user`` only)."""
    socket: Path | None = None
    """The vde_switch control directory (``vde`` only)."""
    forwards: tuple[tuple[int, int], ...] = ()
    """More ``(host port, guest port)`` TCP forwards, host side on 127.0.0.1 (``user`` only)."""
    dump: Path | None = None
    """A pcap file that gets this NIC's packets, headers only (see :mod:`keel_harness.netwatch`)."""


@dataclass(frozen=True)
class QemuSpec:
    """Everything needed to start one machine."""

    name: str
    accel: str
    memory_mib: int
    cpus: int
    disk: Path | None = None
    """The machine's own qcow2 overlay (never the shared image)."""
    firmware: str = "bios"
    ovmf_vars: Path | None = None
    """The machine's own copy of the OVMF variable store (``uefi`` only)."""
    kernel: Path | None = None
    initrd: Path | None = None
    kernel_args: Sequence[str] = ()
    nics: Sequence[Nic] = ()
    fw_cfg: Path | None = None
    console: Path | None = None
    """File the first serial port is written to; None means this terminal (stdio)."""
    qmp: Path | None = None
    extra: Sequence[str] = field(default_factory=tuple)


def command(spec: QemuSpec, qemu: str = "qemu-system-x86_64") -> list[str]:
    """The argv that starts ``spec``."""
    if spec.accel not in ("kvm", "tcg"):
        raise HarnessError(f"{spec.name}: unknown accelerator {spec.accel!r}")
    if spec.firmware not in ("bios", "uefi"):
        raise HarnessError(f"{spec.name}: firmware must be bios or uefi, not {spec.firmware!r}")
    argv = [qemu, "-name", spec.name, "-accel", spec.accel,
            "-cpu", accel.cpu_model(spec.accel),
            "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
            "-nodefaults", "-display", "none", "-no-user-config"]  # fmt: skip
    if spec.firmware == "uefi":
        if spec.ovmf_vars is None:
            raise HarnessError(f"{spec.name}: uefi needs a per-machine OVMF_VARS copy")
        argv += ["-machine", "q35",
                 "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={spec.ovmf_vars}"]  # fmt: skip
    else:
        argv += ["-machine", "q35"]
    if spec.disk is not None:
        argv += ["-drive", f"file={spec.disk},format=qcow2,if=virtio,discard=unmap"]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        argv += ["-append", " ".join(spec.kernel_args)]
    for index, nic in enumerate(spec.nics):
        argv += _nic_args(spec.name, index, nic)
    argv += ["-device", "virtio-rng-pci"]
    if spec.fw_cfg is not None:
        argv += ["-fw_cfg", f"name={FW_CFG_NAME},file={spec.fw_cfg}"]
    if spec.console is None:
        # signal=on: Ctrl-C on the terminal stops QEMU (and the harness stops it too).
        argv += ["-chardev", "stdio,id=console0,signal=on", "-serial", "chardev:console0"]
    else:
        argv += ["-chardev", f"file,id=console0,path={spec.console},append=on",
                 "-serial", "chardev:console0"]  # fmt: skip
    if spec.qmp is not None:
        argv += ["-qmp", f"unix:{spec.qmp},server=on,wait=off"]
    argv += list(spec.extra)
    return argv


def _nic_args(machine: str, index: int, nic: Nic) -> list[str]:
    netdev = f"net{index}"
    if nic.kind == "user":
        # restrict=on: the guest reaches neither the host nor the outside; only the
        # forwards into it work (SSH and any extra ones), and they listen on loopback only.
        fwd = f",hostfwd=tcp:127.0.0.1:{nic.ssh_port}-:22" if nic.ssh_port else ""
        for host_port, guest_port in nic.forwards:
            fwd += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
        backend = f"user,id={netdev},restrict=on{fwd}"
    elif nic.kind == "vde":
        if nic.socket is None:
            raise HarnessError(f"{machine}: a vde NIC needs the switch's socket")
        backend = f"vde,id={netdev},sock={nic.socket}"
    else:
        raise HarnessError(f"{machine}: unknown NIC kind {nic.kind!r}")
    argv = ["-netdev", backend, "-device", f"virtio-net-pci,netdev={netdev},mac={nic.mac}"]
    if nic.dump is not None:
        argv += ["-object", f"filter-dump,id=dump{index},netdev={netdev},file={nic.dump},"
                 f"maxlen={netwatch.SNAPLEN}"]  # fmt: skip
    return argv


def mac_address(segment: int, index: int) -> str:
    """A locally administered MAC in QEMU's 52:54:00 prefix: ``segment`` (0 = user net)."""
    return f"52:54:00:{segment & 0xFF:02x}:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"


class Qmp:
    """A minimal QMP client: one request at a time over the machine's unix socket."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one QMP ``command``; returns its ``return`` value, raises on ``error``."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                raise HarnessError(f"QMP {self.path}: {exc}") from exc
            stream = sock.makefile("rwb")
            self._read(stream)  # greeting
            self._send(stream, {"execute": "qmp_capabilities"})
            self._read(stream)
            request: dict[str, Any] = {"execute": command}
            if arguments:
                request["arguments"] = arguments
            self._send(stream, request)
            try:
                reply = self._read(stream)
            except (OSError, HarnessError):
                if command == "quit":  # QEMU may close the socket before it answers
                    return None
                raise
        if "error" in reply:
            raise HarnessError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    @staticmethod
    def _send(stream: Any, message: dict[str, Any]) -> None:
        stream.write(json.dumps(message).encode() + b"\n")
        stream.flush()

    @staticmethod
    def _read(stream: Any) -> dict[str, Any]:
        while True:
            line = stream.readline()
            if not line:
                raise HarnessError("QMP connection closed")
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:
                return message
