from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from keel_core import __version__
from keel_core.cli import cli


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"keel, version {__version__}"


def test_help_lists_plugin_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("plugins", "platforms", "health"):
        assert command in result.output


def test_plugins_json_lists_components_with_origin_and_hooks():
    result = run("plugins", "--json", env={"KEEL_DISABLE_PLUGINS": ""})
    assert result.exit_code == 0
    data = json.loads(result.output)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert {"core", "store", "supervisor", "image", "update", "provision"} <= set(by_name)
    assert by_name["core"]["distribution"] == "keel-core"
    assert by_name["core"]["version"] == __version__
    assert by_name["core"]["location"].endswith("keel_core/builtin.py")
    assert "keel_cli" in by_name["core"]["hooks"]


def test_disabled_plugin_disappears_from_listing():
    result = run("plugins", "--json", env={"KEEL_DISABLE_PLUGINS": "store,update"})
    data = json.loads(result.output)
    names = {p["name"] for p in data["plugins"]}
    assert "store" not in names
    assert "update" not in names
    assert data["disabled"] == ["store", "update"]


def test_plugins_table_shows_disabled_line():
    result = run("plugins", env={"KEEL_DISABLE_PLUGINS": "store"})
    assert result.exit_code == 0
    assert "keel-core" in result.output
    assert "disabled by KEEL_DISABLE_PLUGINS: store" in result.output


def test_health_list_shows_core_checks():
    result = run("health", "--list")
    assert "no-failed-units: no unit is in the failed state" in result.output


def test_broken_plugin_is_a_one_line_error_not_a_traceback(entry_points):
    entry_points({"broken": "raise RuntimeError('boom at import')\n"})
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 2
    assert result.stderr.startswith("keel: error: plugin 'broken': failed to load")
    assert "RuntimeError: boom at import" in result.stderr


def test_main_prints_plugin_errors_without_traceback(tmp_path):
    # A real process, with a real broken entry point in a real distribution.
    site = tmp_path / "site"
    (site / "brokenplugin").mkdir(parents=True)
    (site / "brokenplugin" / "__init__.py").write_text(
        "raise ImportError('missing dependency xyz')\n"
    )
    dist = site / "brokenplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[keel]\nbroken = brokenplugin\n")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", "from keel_core.cli import main; main()", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "keel: error: plugin 'broken': failed to load brokenplugin (from brokenplugin): "
        "ImportError: missing dependency xyz"
    )


def test_health_skips_checks_whose_unit_is_absent_and_fails_the_others(entry_points):
    entry_points(
        {
            "checks": """
            from keel_core import hookimpl
            from keel_core.types import HealthCheck

            @hookimpl
            def keel_health_checks():
                return [
                    HealthCheck("passes", "true"),
                    HealthCheck("absent", "exit 1", unit="keel-absent-unit-xyz.service"),
                    HealthCheck("fails", "echo out of luck; exit 3"),
                ]
            """
        }
    )
    result = CliRunner().invoke(cli, ["health"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "ok   passes",
        "skip absent: keel-absent-unit-xyz.service is not on this machine",
        "FAIL fails: out of luck",
    ]


def test_health_check_script_guards_on_its_unit():
    from keel_core.types import HealthCheck

    plain = HealthCheck("a", "true")
    assert plain.script() == "true"
    guarded = HealthCheck("b", "true", unit="x y.service")
    assert guarded.script() == "systemctl cat 'x y.service' >/dev/null 2>&1 || exit 77\ntrue"
