"""Credentials from podman/docker login files."""

from __future__ import annotations

import base64
import json

import pytest

from keel_supervisor.images import ImageError
from keel_supervisor.images.credentials import find_credentials


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_podman_file_before_docker_file(tmp_path):
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers/auth.json").write_text(
        json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth("podman", "p:w")}}})
    )
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker/config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "127.0.0.1:5000": {"auth": auth("docker", "x")},
                    "https://index.docker.io/v1/": {"auth": auth("hub", "y")},
                }
            }
        )
    )
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    assert find_credentials("127.0.0.1:5000", env) == ("podman", "p:w")
    assert find_credentials("docker.io", env) == ("hub", "y")
    assert find_credentials("quay.io", env) is None


def test_broken_file_is_named_with_position(tmp_path):
    bad = tmp_path / "auth.json"
    bad.write_text('{"auths": {\n  "x": }\n}')
    with pytest.raises(ImageError, match=r"auth\.json:2:\d+: not valid JSON"):
        find_credentials("x", {"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(bad)})


def test_bad_auth_value(tmp_path):
    bad = tmp_path / "auth.json"
    bad.write_text(json.dumps({"auths": {"x": {"auth": "not-base64!"}}}))
    with pytest.raises(ImageError, match=r"auths\.x\.auth is not base64"):
        find_credentials("x", {"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(bad)})
