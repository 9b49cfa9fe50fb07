"""Auth tokens: etcd's ``--auth-token`` providers, ``simple`` (default) and ``jwt``.

A *simple* token is a random string this member remembers (member-local, as with etcd:
a client that moves to another member authenticates again). A *JWT* is signed with the
private key given to every member, so any member (and anyone holding the public key)
can verify it without shared state; its claims are etcd's: ``username``, ``revision``
(the auth store's revision when it was issued) and ``exp``.

``--auth-token jwt,pub-key=<pem>,priv-key=<pem>,sign-method=RS256,ttl=5m`` as etcd
3.4 spells it; the sign methods are RS/PS/ES/HS 256/384/512 (HS takes the secret from
``priv-key``).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jwt

from keel_store.mvcc.errors import Code, EtcdError

NO_SIGNING_KEY = EtcdError(
    Code.FAILED_PRECONDITION, "etcdserver: no priv-key in --auth-token, cannot sign a token"
)

DEFAULT_JWT_TTL = 300.0
"""etcd's default lifetime of a JWT: five minutes."""

SIGN_METHODS = tuple(
    f"{family}{bits}" for family in ("RS", "PS", "ES", "HS") for bits in (256, 384, 512)
)


class TokenSpecError(ValueError):
    """``--auth-token`` is malformed; the message says which part and why."""


class TokenProvider(Protocol):
    """Issues tokens at ``Authenticate`` and maps them back to a user on every request."""

    def assign(self, user: str, revision: int) -> str:
        """A new token for ``user``, issued at auth store ``revision``."""
        ...

    def info(self, token: str) -> tuple[str, int | None] | None:
        """(user, revision the token carries or None) for a valid token, else None."""
        ...

    def invalidate_user(self, user: str) -> None:
        """The user was deleted or its password changed (applied): drop its tokens."""
        ...


DEFAULT_SIMPLE_TTL = 300.0
"""etcd's ``--auth-token-ttl``: a simple token unused for five minutes expires."""


class SimpleTokens:
    """etcd's default: opaque random tokens kept in this member's memory.

    A token lives ``ttl`` seconds past its last use (etcd's ``simpleTokenTTLKeeper``
    resets the deadline on every check); expired tokens are swept at most once a
    second when a token is issued, so a member authenticating a client per command
    (etcdctl does) does not grow without bound.
    """

    def __init__(self, ttl: float = DEFAULT_SIMPLE_TTL, clock: Any = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        """token -> (user, deadline)"""
        self._counter = itertools.count(1)
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._tokens)

    def assign(self, user: str, revision: int) -> str:
        now = self._clock()
        if now - self._swept >= 1.0:
            self._swept = now
            self._drop(lambda _, deadline: now > deadline)
        token = f"{secrets.token_urlsafe(12)}.{next(self._counter)}"
        self._tokens[token] = (user, now + self.ttl)
        return token

    def info(self, token: str) -> tuple[str, int | None] | None:
        found = self._tokens.get(token)
        if found is None:
            return None
        user, deadline = found
        now = self._clock()
        if now > deadline:
            del self._tokens[token]
            return None
        self._tokens[token] = (user, now + self.ttl)
        return user, None

    def invalidate_user(self, user: str) -> None:
        """As etcd's ``invalidateUser``: a deleted user's tokens, or those issued under
        a changed password, stop working on this member."""
        self._drop(lambda owner, _: owner == user)

    def _drop(self, doomed: Callable[[str, float], bool]) -> None:
        for token in [t for t, (user, deadline) in self._tokens.items() if doomed(user, deadline)]:
            del self._tokens[token]


class JwtTokens:
    """Signed, self-contained tokens: valid on every member that has the public key."""

    def __init__(self, method: str, private_key: Any, public_key: Any, ttl: float) -> None:
        self.method = method
        self.private_key = private_key
        self.public_key = public_key
        self.ttl = ttl

    def assign(self, user: str, revision: int) -> str:
        if self.private_key is None:
            raise NO_SIGNING_KEY
        claims = {"username": user, "revision": revision, "exp": int(time.time() + self.ttl)}
        return jwt.encode(claims, self.private_key, algorithm=self.method)

    def info(self, token: str) -> tuple[str, int | None] | None:
        try:
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=[self.method],
                options={"require": ["username", "revision"]},
            )
        except jwt.InvalidTokenError:
            return None
        user, revision = claims.get("username"), claims.get("revision")
        if not isinstance(user, str) or not isinstance(revision, int):
            return None
        return user, revision

    def invalidate_user(self, user: str) -> None:
        """Nothing to drop: a JWT from before the change carries an older auth revision
        and is refused for that ("auth revision is old")."""


def _duration(text: str) -> float:
    units = (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    total, rest = 0.0, text
    while rest:
        digits = len(rest) - len(rest.lstrip("0123456789."))
        unit = next((u for u in units if rest[digits:].startswith(u[0])), None)
        if digits == 0 or unit is None:
            raise TokenSpecError(f"--auth-token: ttl={text!r} is not a duration like 5m or 30s")
        total += float(rest[:digits]) * unit[1]
        rest = rest[digits + len(unit[0]) :]
    if total <= 0:
        raise TokenSpecError(f"--auth-token: ttl={text!r} must be positive")
    return total


def _load_key(option: str, path: str, method: str, private: bool) -> Any:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - jwt only

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TokenSpecError(f"--auth-token: {option}={path}: {exc.strerror}") from None
    if method.startswith("HS"):
        return data
    try:
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        kind = "private" if private else "public"
        raise TokenSpecError(
            f"--auth-token: {option}={path}: not a PEM {kind} key ({exc})"
        ) from None


def parse(spec: str, simple_ttl: float = DEFAULT_SIMPLE_TTL) -> TokenProvider:
    """A provider from etcd's ``--auth-token`` value (``simple`` or ``jwt,k=v,...``);
    ``simple_ttl`` is ``--auth-token-ttl`` (seconds), which only simple tokens use."""
    kind, *options = [part.strip() for part in spec.split(",")]
    if kind == "simple" and not options:
        return SimpleTokens(simple_ttl)
    if kind != "jwt":
        raise TokenSpecError(f"--auth-token: {kind!r} is not 'simple' or 'jwt,...'")
    opts: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("pub-key", "priv-key", "sign-method", "ttl"):
            raise TokenSpecError(
                f"--auth-token: unknown option {option!r} (pub-key, priv-key, sign-method, ttl)"
            )
        opts[key] = value
    method = opts.get("sign-method", "")
    if method not in SIGN_METHODS:
        raise TokenSpecError(
            f"--auth-token: sign-method={method!r} is not one of {', '.join(SIGN_METHODS)}"
        )
    if "pub-key" not in opts and "priv-key" not in opts:
        raise TokenSpecError("--auth-token: jwt needs pub-key and/or priv-key")
    private: Any = (
        _load_key("priv-key", opts["priv-key"], method, True) if "priv-key" in opts else None
    )
    public: Any = (
        _load_key("pub-key", opts["pub-key"], method, False) if "pub-key" in opts else None
    )
    if public is None:
        public = private if method.startswith("HS") else private.public_key()
    elif (
        private is not None
        and not method.startswith("HS")
        and private.public_key().public_numbers() != public.public_numbers()
    ):
        raise TokenSpecError("--auth-token: pub-key does not match priv-key")
    ttl = _duration(opts["ttl"]) if opts.get("ttl") else DEFAULT_JWT_TTL
    return JwtTokens(method, private, public, ttl)
