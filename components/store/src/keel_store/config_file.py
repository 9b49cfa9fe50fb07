"""etcd's ``--config-file``: a member's settings as YAML, keys named like the flags.

etcd 3.4 reads the file into its server configuration and then ignores every other
flag and ``ETCD_*`` variable; keel-store does the same. The keys are the flag names
(``name``, ``data-dir``, ``initial-cluster`` ...), except TLS, which sits in two maps::

    client-transport-security:
      cert-file: /etc/keel/server.pem       # --cert-file
      key-file: /etc/keel/server-key.pem    # --key-file
      client-cert-auth: true                # --client-cert-auth
      trusted-ca-file: /etc/keel/ca.pem     # --trusted-ca-file
      auto-tls: false                       # --auto-tls
    peer-transport-security: {...}          # the same keys, for the --peer-* flags

Values take etcd's YAML types: numbers for counts and milliseconds, ``true``/``false``,
strings for URLs (comma separated), lists for ``log-outputs`` and ``cipher-suites``, and
for a Go duration either a string (``10m``) or, as etcd writes a ``time.Duration``, a
number of nanoseconds. A value of the wrong type is an error naming the file, the line
and the key; an unknown key is reported (with its line) and ignored, as etcd ignores it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SECURITY_KEYS = {
    "client-transport-security": {
        "cert-file": "cert-file",
        "key-file": "key-file",
        "client-cert-auth": "client-cert-auth",
        "trusted-ca-file": "trusted-ca-file",
        "auto-tls": "auto-tls",
    },
    "peer-transport-security": {
        "cert-file": "peer-cert-file",
        "key-file": "peer-key-file",
        "client-cert-auth": "peer-client-cert-auth",
        "trusted-ca-file": "peer-trusted-ca-file",
        "auto-tls": "peer-auto-tls",
    },
}
"""etcd's ``securityConfig`` maps: key in the file -> flag."""

LIST_KEYS = frozenset({"log-outputs", "cipher-suites"})
"""Keys etcd's file takes as YAML lists (joined with commas, as the flags take them)."""


class ConfigFileError(ValueError):
    """The file cannot be used; the message names the file, line and key."""


def _flat(
    path: Path, mapping: yaml.MappingNode, prefix: dict[str, str] | None
) -> list[tuple[str, yaml.Node, str]]:
    """(flag, value node, key as written) for each entry, security maps flattened."""
    out: list[tuple[str, yaml.Node, str]] = []
    for key_node, value_node in mapping.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
        if prefix is None and key in SECURITY_KEYS:
            if isinstance(value_node, yaml.ScalarNode) and value_node.value in ("", "null", "~"):
                continue
            if not isinstance(value_node, yaml.MappingNode):
                raise ConfigFileError(
                    f"{path}:{value_node.start_mark.line + 1}: {key}: expected a map of"
                    " cert-file, key-file, client-cert-auth, trusted-ca-file, auto-tls"
                )
            for flag, node, written in _flat(path, value_node, SECURITY_KEYS[key]):
                out.append((flag, node, f"{key}.{written}"))
            continue
        if prefix is not None:
            out.append((prefix.get(key, f"?{key}"), value_node, key))
        else:
            out.append((key, value_node, key))
    return out


def _convert(value: Any, default: Any, flag: str, duration: bool) -> Any:
    """``value`` as the flag's type, or raise ValueError saying what was expected."""
    if value is None:
        return default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected a whole number")
        return value
    if flag in LIST_KEYS and isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return ",".join(value)
    if isinstance(value, (bool, list, dict)):
        raise ValueError("expected a string")
    if isinstance(value, int) and duration:
        return f"{value}ns"  # a Go time.Duration in etcd's file: nanoseconds
    if isinstance(value, (int, float)):
        return str(value)
    return value


def load(
    path: str, flags: dict[str, Any], durations: frozenset[str]
) -> tuple[dict[str, Any], list[str]]:
    """Read ``path``: (values by flag name, notes about ignored keys).

    ``flags`` maps every flag name to its default (which gives its type);
    ``durations`` names the flags whose values are Go durations.
    """
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigFileError(f"--config-file: {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"--config-file: {path}: not a text file") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ConfigFileError(f"{where}: not valid YAML: {exc.problem}") from None
    if root is None:
        return {}, [f"{path}: empty; every setting at its default"]
    if not isinstance(root, yaml.MappingNode):
        raise ConfigFileError(f"{path}:{root.start_mark.line + 1}: expected a map of settings")
    values: dict[str, Any] = {}
    notes: list[str] = []
    constructor = yaml.SafeLoader("")
    for flag, node, written in _flat(file, root, None):
        line = node.start_mark.line + 1
        if flag not in flags or flag == "config-file":
            notes.append(f"{path}:{line}: {written}: not an etcd 3.4 setting; ignored")
            continue
        try:
            raw = constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise ConfigFileError(f"{path}:{line}: {written}: {exc}") from None
        try:
            values[flag] = _convert(raw, flags[flag], flag, flag in durations)
        except ValueError as exc:
            raise ConfigFileError(f"{path}:{line}: {written}: {exc}, not {raw!r}") from None
    return values, notes
