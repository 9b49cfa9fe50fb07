"""The supervisor's hooks, runtime choice, app files and API routing (unit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_core import plugins
from keel_core.config import load_text
from keel_core.schemas import ImageDefinition
from keel_supervisor import apps, runtimes
from keel_supervisor.api import Router
from keel_supervisor.model import SupervisorError
from keel_supervisor.sources import image_health


def test_plugin_is_loaded_with_its_hooks() -> None:
    pm = plugins.load()
    info = pm.infos["supervisor"]
    assert {"keel_cli", "keel_container_runtimes", "keel_image_contribution"} <= set(info.hooks)
    names = [r.name for r in plugins.collect(pm.hook.keel_container_runtimes())]
    assert {"runc", "crun"} <= set(names)


def test_image_contribution_only_when_included() -> None:
    pm = plugins.load()
    without = ImageDefinition(name="x", version="1")
    with_sup = ImageDefinition(name="x", version="1", components=["supervisor"])
    assert all(
        c is None or c.name != "supervisor" for c in pm.hook.keel_image_contribution(image=without)
    )
    (mine,) = [
        c for c in pm.hook.keel_image_contribution(image=with_sup) if c and c.name == "supervisor"
    ]
    assert "runc" in mine.packages
    assert "keel-supervisor.service" in mine.units
    unit = next(f for f in mine.files if f.path.endswith("keel-supervisor.service"))
    assert unit.content is not None
    assert b"KillMode=process" in unit.content  # stopping the daemon keeps containers
    # networkd leaves the bridge and the veths alone, and sorts this before keel-base's
    # catch-all DHCP file (99-keel-dhcp.network)
    network = next(f for f in mine.files if f.path.startswith("/usr/lib/systemd/network/"))
    assert network.path.rsplit("/", 1)[1] < "99-keel-dhcp.network"
    assert network.content is not None
    assert b"Name=keel0 vk*" in network.content
    assert b"Unmanaged=yes" in network.content


class FakeRuntime:
    def __init__(self, name: str, priority: int, ok: bool) -> None:
        self.name, self.priority, self.ok = name, priority, ok

    def available(self) -> bool:
        return self.ok

    def command(self) -> list[str]:
        return [self.name]


def test_choose_runtime() -> None:
    options = [FakeRuntime("a", 10, True), FakeRuntime("b", 50, True), FakeRuntime("c", 99, False)]
    assert runtimes.choose(options).name == "b"
    assert runtimes.choose(options, "a").name == "a"
    with pytest.raises(SupervisorError, match="not available"):
        runtimes.choose(options, "c")
    with pytest.raises(SupervisorError, match="known: a, b, c"):
        runtimes.choose(options, "zz")
    with pytest.raises(SupervisorError, match="apt-get install runc"):
        runtimes.choose([FakeRuntime("c", 1, False)])


def test_app_files_scan(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text("image: nginx\nports: ['8080:80']\n")
    (tmp_path / "db.yaml").write_text("image: postgres\nrestart: on-failure:3\nname: pg\n")
    (tmp_path / "bad.yaml").write_text("image: x\nresources:\n  memory: lots\n")
    found, problems = apps.scan(tmp_path)
    assert sorted(found) == ["pg", "web"]
    assert str(found["web"].config.restart) == "unless-stopped"
    assert str(found["pg"].config.restart) == "on-failure:3"
    assert found["web"].config.labels[apps.APP_LABEL] == "web"
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'bad.yaml'}:3:")
    assert "resources.memory" in problems[0]


def test_router_matches_segments() -> None:
    router = Router()
    router.add("GET", "/containers/{ref}/logs", lambda **kw: kw)
    found = router.find("GET", "/containers/web/logs")
    assert found is not None
    assert found[1] == {"ref": "web"}
    assert router.find("POST", "/containers/web/logs") is None
    assert router.find("GET", "/containers/a/b/logs") is None


def test_image_healthcheck_is_used() -> None:
    check = image_health(
        {
            "Healthcheck": {
                "Test": ["CMD-SHELL", "curl -f localhost"],
                "Interval": 5_000_000_000,
                "Retries": 2,
            }
        }
    )
    assert check is not None
    assert check.test == ["/bin/sh", "-c", "curl -f localhost"]
    assert (check.interval, check.retries) == (5.0, 2)
    assert image_health({"Healthcheck": {"Test": ["NONE"]}}) is None
    assert load_text("test: [x]\n", type(check)).test == ["x"]


def test_cli_verbs_at_top_level_and_in_the_group(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from keel_core.cli import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["--help"]).output
    for verb in ("run", "ps", "logs", "images", "rmi", "services", "container"):
        assert f"  {verb} " in listed
    socket = tmp_path / "none.sock"
    for args in (["ps"], ["container", "--socket", str(socket), "ps"]):
        result = runner.invoke(cli, args, env={"KEEL_SUPERVISOR_SOCKET": str(socket)})
        assert result.exit_code == 2
        assert f"no supervisor is listening on {socket}" in result.output
    bad = runner.invoke(cli, ["container", "run", "--restart", "sometimes", "img"])
    assert bad.exit_code == 2
    assert "unknown restart policy 'sometimes'" in bad.output
