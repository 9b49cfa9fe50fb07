"""``python -m keel_harness boot IMAGE [--firmware bios|uefi]``: boot an image interactively.

IMAGE is an image directory (``out/<name>-<version>/``), a disk file, or a definition
(built first). The console is this terminal; the SSH command is printed before the boot
starts; Ctrl-C stops QEMU. The machine boots a throwaway overlay; the image is untouched.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from keel_harness import images, qemu, reaper, ssh
from keel_harness.errors import HarnessError
from keel_harness.machine import Machine
from keel_harness.run import HarnessRun

SSH_OPTIONS = " ".join(ssh.CLI_OPTIONS)


def boot(image: Path, firmware: str, memory: int | None, cpus: int | None) -> int:
    """Boot ``image`` with the console on this terminal; returns QEMU's exit status."""
    disk = images.resolve(image)
    with tempfile.TemporaryDirectory(prefix="keel-boot-") as tmp:
        run = HarnessRun(Path(tmp), firmware=firmware)
        overrides: dict[str, Any] = {"image": disk}
        if memory:
            overrides["memory_mib"] = memory
        if cpus:
            overrides["cpus"] = cpus
        machine = Machine(run.config("keel", **overrides), Path(tmp) / "keel")
        spec = machine._spec()
        spec = qemu.QemuSpec(**{**spec.__dict__, "console": None})
        sizing = f"{spec.cpus} vCPU, {spec.memory_mib} MiB"
        print(f"keel boot: {disk} ({firmware}, {run.accel}, {sizing})")
        ssh_cmd = f"ssh -i {run.key.private} -p {machine.ssh_port} {SSH_OPTIONS} core@127.0.0.1"
        print(f"keel boot: {ssh_cmd}")
        print("keel boot: Ctrl-C stops the machine", flush=True)
        proc = reaper.spawn(qemu.command(spec), stdin=None, stdout=None, stderr=None,
                            foreground=True)  # fmt: skip
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return reaper.stop(proc)
        finally:
            reaper.stop(proc)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m keel_harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p_boot = sub.add_parser("boot", help="boot an image with the console on this terminal")
    p_boot.add_argument("image", type=Path, help="image directory, disk file or definition")
    p_boot.add_argument("--firmware", choices=("bios", "uefi"), default="bios")
    p_boot.add_argument("--memory", type=int, help="MiB of guest memory (default 1024)")
    p_boot.add_argument("--cpus", type=int, help="vCPUs (default: the host's cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return boot(args.image, args.firmware, args.memory, args.cpus)
    except HarnessError as exc:
        print(f"keel boot: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
