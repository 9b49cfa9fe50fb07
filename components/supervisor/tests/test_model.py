"""Parsing of docker-style settings and app blocks (unit)."""

from __future__ import annotations

import pytest

from keel_core.config import load_text
from keel_core.errors import ConfigError
from keel_supervisor.model import ContainerConfig, Mount, PortMapping, RestartPolicy, parse_size


@pytest.mark.parametrize(
    ("text", "name", "retries"),
    [
        ("no", "no", 0),
        ("on-failure", "on-failure", 0),
        ("on-failure:3", "on-failure", 3),
        ("always", "always", 0),
        ("unless-stopped", "unless-stopped", 0),
    ],
)
def test_restart_policy_parses_docker_spelling(text: str, name: str, retries: int) -> None:
    policy = RestartPolicy.parse(text)
    assert (policy.name, policy.max_retries) == (name, retries)
    assert str(policy) == text


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x"])
def test_restart_policy_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match=r"restart policy|retry count|only on-failure"):
        RestartPolicy.parse(text)


def test_port_mapping_forms() -> None:
    assert PortMapping.parse("8080:80") == PortMapping(host_port=8080, container_port=80)
    mapped = PortMapping.parse("0.0.0.0:53:5353/tcp")
    assert (mapped.host_ip, mapped.host_port, mapped.container_port) == ("0.0.0.0", 53, 5353)
    with pytest.raises(ValueError, match="HOST:CONTAINER"):
        PortMapping.parse("80")
    with pytest.raises(ValueError, match="numbers"):
        PortMapping.parse("a:b")


def test_volume_forms() -> None:
    assert Mount.parse("/srv:/data:ro") == Mount(source="/srv", target="/data", read_only=True)
    named = Mount.parse("cache:/var/cache")
    assert not named.is_bind
    assert named.target == "/var/cache"
    with pytest.raises(ValueError, match="SOURCE:/TARGET"):
        Mount.parse("/srv")


def test_sizes() -> None:
    assert parse_size("64m") == 64 << 20
    assert parse_size("1g") == 1 << 30
    assert parse_size("1.5k") == 1536
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_app_block_in_yaml_uses_short_forms() -> None:
    config = load_text(
        "image: web\nrestart: on-failure:2\nports: ['8080:80']\nresources: {memory: 32m}\n",
        ContainerConfig,
    )
    assert config.restart.max_retries == 2
    assert config.ports[0].host_port == 8080
    assert config.resources.memory == 32 << 20


def test_yaml_error_names_line_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("image: web\nrestrat: always\n", ContainerConfig, filename="web.yaml")
    problem = info.value.problems[0]
    assert (problem.file, problem.line, problem.key_path) == ("web.yaml", 2, "restrat")
    assert "did you mean 'restart'" in problem.message
