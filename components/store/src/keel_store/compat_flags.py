"""etcd 3.4 flags that keel-store takes but that mean nothing (or something else) here.

Someone who runs etcd swaps the binary name and keeps the command line, so every flag
of etcd 3.4 is taken; the ones in this module are checked (a value etcd would refuse
is refused here too) and then either change nothing, because the thing they tune does
not exist in keel-store (bbolt's batching and freelist), or are logged as ignored when
set to something other than etcd's default, so the operator learns what did not
happen. One is refused outright: a mode keel-store does not have (``--proxy=on``) must not
come up as a member that silently ignores it.

The flags that keel-store implements are in ``keel_store.flags.FLAGS``.
"""

from __future__ import annotations

import argparse
from typing import Any

COMPAT_FLAGS: list[tuple[str, Any, str]] = [
    (
        "log-package-levels",
        "",
        "ignored (etcd 3.4's capnslog per-package levels); use --log-level",
    ),
    ("log-output", "", "deprecated in etcd 3.4: --log-outputs, used when that is not given"),
    ("enable-pprof", False, "ignored: no Go profiler (profile keel-store with py-spy)"),
    (
        "backend-batch-interval",
        "0s",
        "no effect: keel-store has no backend transactions to batch (the WAL is fsynced per Ready)",
    ),
    ("backend-batch-limit", 0, "no effect (see --backend-batch-interval)"),
    (
        "experimental-backend-bbolt-freelist-type",
        "map",
        "no effect: the key space is not kept in bbolt (map or array, as etcd checks)",
    ),
    (
        "experimental-compaction-batch-limit",
        1000,
        "no effect: compaction drops revisions in memory, a slice at a time",
    ),
    (
        "experimental-enable-v2v3",
        "",
        "ignored: the v2 API is not served (neither is its v3 emulation)",
    ),
    (
        "experimental-enable-lease-checkpoint-persist",
        False,
        "ignored: checkpointed lease TTLs are kept in memory only (etcd 3.4's default)",
    ),
    ("proxy", "off", "off only: keel-store has no v2 proxy mode"),
    ("proxy-failure-wait", 5000, "no effect without --proxy (ms)"),
    ("proxy-refresh-interval", 30000, "no effect without --proxy (ms)"),
    ("proxy-dial-timeout", 1000, "no effect without --proxy (ms)"),
    ("proxy-write-timeout", 5000, "no effect without --proxy (ms)"),
    ("proxy-read-timeout", 0, "no effect without --proxy (ms)"),
]
"""(name, etcd's default, what it does in keel-store), as ``flags.FLAGS``."""

_IGNORED_WHEN_SET = (
    "log-package-levels",
    "enable-pprof",
    "experimental-enable-v2v3",
    "experimental-enable-lease-checkpoint-persist",
)

_DURATIONS = ("backend-batch-interval",)


class UnsupportedFlag(ValueError):
    """A compatibility flag has a value etcd would refuse, or asks for a missing mode."""


def _value(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name.replace("-", "_"))


def _default(name: str) -> Any:
    return next(default for flag, default, _ in COMPAT_FLAGS if flag == name)


def check(args: argparse.Namespace, duration: Any) -> list[str]:
    """Refuse what keel-store cannot honour; return warnings for flags set but ignored.

    ``duration(text, flag)`` parses a Go duration (raising ``ValueError`` naming the flag).
    """
    for name in _DURATIONS:
        duration(_value(args, name), name)
    freelist = _value(args, "experimental-backend-bbolt-freelist-type")
    if freelist not in ("map", "array"):
        raise UnsupportedFlag(
            f"--experimental-backend-bbolt-freelist-type: {freelist!r} is not 'map' or 'array'"
        )
    for name in ("backend-batch-limit", "experimental-compaction-batch-limit"):
        if _value(args, name) < 0:
            raise UnsupportedFlag(f"--{name}: {_value(args, name)} is negative")
    proxy = _value(args, "proxy")
    if proxy != "off":
        if proxy not in ("on", "readonly"):
            raise UnsupportedFlag(f"--proxy: {proxy!r} is not 'off', 'readonly' or 'on'")
        raise UnsupportedFlag(
            f"--proxy={proxy}: keel-store has no proxy mode (etcd's v2 proxy); run a member,"
            " or point clients at several members"
        )
    warnings = []
    for name in _IGNORED_WHEN_SET:
        value = _value(args, name)
        if value == _default(name) or value in ("", "0", "0ns", "0s"):
            continue
        help_text = next(h for flag, _, h in COMPAT_FLAGS if flag == name)
        warnings.append(f"--{name}={value}: {help_text}")
    return warnings
