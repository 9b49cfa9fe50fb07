"""``keel slot`` (the in-image shell script) drives the grubenv that GRUB reads.

The grubenv it writes is checked with GRUB's own ``grub-editenv``, and the state
machine (set-next gives one try; mark-good keeps the running slot) is walked through.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from keel_image.bootloader import grubenv

SCRIPT = Path(str(resources.files("keel_image") / "guest" / "keel-slot"))


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    keel = tmp_path / "keel"
    keel.mkdir()
    (keel / "grubenv").write_bytes(grubenv({"keel_good": "A", "keel_try": "", "keel_tries": "0"}))
    (keel / "slot-A.cfg").write_text("linux ...\n")
    (keel / "slot-B.cfg").write_text("linux ...\n")
    return keel


def slot(esp: Path, *args: str, booted: str = "A", check: bool = True) -> str:
    cmdline = esp / "cmdline"
    cmdline.write_text(f"console=ttyS0 keel.slot={booted} rw\n")
    env = {**os.environ, "KEEL_GRUBENV": str(esp / "grubenv"), "KEEL_CMDLINE": str(cmdline)}
    proc = subprocess.run(
        ["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def grub_sees(esp: Path) -> dict[str, str]:
    if shutil.which("grub-editenv") is None:
        pytest.skip("grub-editenv (grub-common) is not installed")
    out = subprocess.run(
        ["grub-editenv", str(esp / "grubenv"), "list"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_initial_environment_boots_a(esp: Path):
    assert grub_sees(esp) == {"keel_good": "A", "keel_try": "", "keel_tries": "0"}
    out = slot(esp, "status")
    assert "current: A" in out
    assert "next: A" in out


def test_set_next_gives_one_try_and_mark_good_keeps_it(esp: Path):
    slot(esp, "set-next", "B")
    assert (esp / "grubenv").stat().st_size == 1024
    assert grub_sees(esp) == {"keel_good": "A", "keel_try": "B", "keel_tries": "1"}
    assert "next: B (one try" in slot(esp, "status")
    # GRUB spends the try before booting B (save_env keel_tries=0), as grub.cfg does:
    subprocess.run(["grub-editenv", str(esp / "grubenv"), "set", "keel_tries=0"], check=True)
    out = slot(esp, "status", booted="B")
    assert "current: B" in out
    assert "next: A" in out  # not marked good: the next boot returns to A
    assert "tried: B" in out
    slot(esp, "mark-good", booted="B")
    assert grub_sees(esp) == {"keel_good": "B", "keel_try": "", "keel_tries": "0"}
    assert "next: B" in slot(esp, "status", booted="B")


def test_mark_good_on_the_good_slot_changes_nothing(esp: Path):
    before = (esp / "grubenv").read_bytes()
    slot(esp, "mark-good", booted="A")
    assert (esp / "grubenv").read_bytes() == before


def test_empty_slot_and_bad_arguments_are_refused(esp: Path):
    (esp / "slot-B.cfg").unlink()
    assert "slot B is empty" in slot(esp, "set-next", "B", check=False)
    assert "usage" in slot(esp, "set-next", "C", check=False)
    assert grub_sees(esp)["keel_try"] == ""


def test_current_reads_the_kernel_command_line(esp: Path):
    assert slot(esp, "current", booted="B").strip() == "B"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_unprivileged_user_is_told_to_use_sudo(esp: Path):
    esp.chmod(0o700)  # as the ESP is mounted: umask=0077
    env = {
        "KEEL_GRUBENV": str(esp / "grubenv"),
        "KEEL_CMDLINE": "/proc/cmdline",
        "PATH": "/usr/bin:/bin",
    }
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(
        [*nobody, "sh", str(SCRIPT), "status"], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"keel slot: {esp / 'grubenv'} is readable by root only "
        "(the ESP is mounted umask=0077): use sudo"
    )


def test_missing_grubenv_says_where_it_looked(esp: Path):
    (esp / "grubenv").unlink()
    out = slot(esp, "status", check=False)
    assert f"keel slot: {esp / 'grubenv'} not found (is the ESP mounted on /boot?)" in out
