"""Registry credentials from the files ``podman login`` and ``docker login`` write.

Looked up in order: ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.config/containers/auth.json``, ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``).
Each holds ``{"auths": {"<registry>": {"auth": base64("user:password")}}}``; Docker Hub may be
keyed ``https://index.docker.io/v1/``. Credential helpers (``credsStore``) are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path

from keel_supervisor.images.errors import ImageError
from keel_supervisor.images.reference import DEFAULT_REGISTRY


def auth_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """The files to look in, most specific first (whether or not they exist)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME", "~")).expanduser()
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(home / ".config" / "containers" / "auth.json")
    files.append(Path(env.get("DOCKER_CONFIG") or home / ".docker") / "config.json")
    return files


def find_credentials(registry: str, env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(user, password)`` for ``registry`` (``host[:port]``) from the first file that has it."""
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DEFAULT_REGISTRY:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    for path in auth_files(env):
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise ImageError(f"{path}: cannot read registry credentials: {exc}") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImageError(
                f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); fix or remove it"
            ) from exc
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            continue
        for key in keys:
            entry = auths.get(key)
            if isinstance(entry, dict) and entry.get("auth"):
                return _decode(entry["auth"], path, key)
    return None


def _decode(value: object, path: Path, key: str) -> tuple[str, str]:
    try:
        user, sep, password = base64.b64decode(str(value), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: auths.{key}.auth is not base64 of user:password") from exc
    if not sep:
        raise ImageError(f"{path}: auths.{key}.auth is not base64 of user:password")
    return user, password
