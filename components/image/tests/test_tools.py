"""A missing tool or a failing command is an error that says what to install or fix."""

from __future__ import annotations

import pytest

from keel_image import tools
from keel_image.errors import BuildError


def test_missing_tool_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildError) as err:
        tools.require("mmdebstrap", "mkfs.erofs", stage="rootfs")
    text = str(err.value)
    assert "stage 'rootfs': missing tool(s): mmdebstrap, mkfs.erofs" in text
    assert "apt-get install erofs-utils mmdebstrap" in text


def test_failing_command_shows_its_output_and_the_hint():
    with pytest.raises(BuildError) as err:
        tools.run(["sh", "-c", "echo first; echo 'the reason' >&2; exit 3"], stage="disk",
                  hint="do this")  # fmt: skip
    text = str(err.value)
    assert "sh failed (exit 3)" in text
    assert "the reason" in text
    assert "fix: do this" in text
    assert err.value.output.splitlines() == ["first", "the reason"]
