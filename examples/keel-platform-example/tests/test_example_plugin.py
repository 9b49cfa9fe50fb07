"""The example plugin, as a plugin author would test theirs."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest

from keel_core import plugins
from keel_core.schemas import ImageDefinition

HERE = Path(__file__).resolve().parents[1]
REPO = HERE.parents[1]


def example_plugin():
    from keel_platform_example import plugin

    return plugin


def test_platform_is_collected_through_the_hook():
    pm = plugins.load(extra=[("example-under-test", example_plugin())], environ={})
    found = {p.name: p for p in plugins.collect(pm.hook.keel_platforms())}
    assert found["example"].formats[0].filename == "disk.raw.gz"
    assert found["example"].emulation is not None
    assert found["example"].emulation.firmware == "uefi"


def test_raw_gz_format_round_trips(tmp_path: Path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(range(256)) * 4096)
    out = tmp_path / "disk.raw.gz"
    example_plugin().write_raw_gz(raw, out)
    assert gzip.decompress(out.read_bytes()) == raw.read_bytes()
    assert not list(tmp_path.glob("*.part"))


def test_contribution_only_for_images_of_this_platform():
    plugin = example_plugin()
    mine = ImageDefinition(name="x", version="1", platforms=["qemu", "example"])
    other = ImageDefinition(name="x", version="1", platforms=["qemu"])
    contribution = plugin.keel_image_contribution(image=mine)
    assert contribution is not None
    assert contribution.units == ["example-agent.service"]
    assert plugin.keel_image_contribution(image=other) is None


@pytest.mark.slow
def test_installs_into_a_fresh_virtualenv_and_is_listed(virtualenv):
    """pip-install keel-core and this folder into a new virtualenv, as a user would."""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    core = REPO / "components" / "core"
    virtualenv.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "-p",
            str(virtualenv.python),
            "-c",
            str(REPO / "constraints.txt"),
            str(core),
            str(HERE),
        ]
    )
    keel = str(Path(virtualenv.virtualenv) / "bin" / "keel")
    listing = json.loads(virtualenv.run([keel, "plugins", "--json"], capture=True))
    by_name = {p["name"]: p for p in listing["plugins"]}
    assert set(by_name) == {"core", "example"}  # only what is installed in this venv
    assert by_name["example"]["distribution"] == "keel-platform-example"
    assert by_name["example"]["version"] == "0.3.0"
    assert by_name["example"]["location"].startswith(str(virtualenv.virtualenv))
    assert sorted(by_name["example"]["hooks"]) == [
        "keel_cli",
        "keel_health_checks",
        "keel_image_contribution",
        "keel_platforms",
    ]
    assert "raw.gz" in virtualenv.run([keel, "platforms"], capture=True)
    assert "formats raw.gz" in virtualenv.run([keel, "example-info"], capture=True)

    virtualenv.env["KEEL_DISABLE_PLUGINS"] = "example"
    disabled = json.loads(virtualenv.run([keel, "plugins", "--json"], capture=True))
    assert [p["name"] for p in disabled["plugins"]] == ["core"]
    assert disabled["disabled"] == ["example"]
