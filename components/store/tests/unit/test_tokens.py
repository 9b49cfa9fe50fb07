"""``--auth-token``: parsing etcd's spec, issuing and checking simple tokens and JWTs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keel_store.mvcc.commands import Kind
from keel_store.mvcc.errors import EtcdError
from keel_store.pb import rpcpb
from keel_store.server import tokens
from keel_store.server.node import StoreNode

from .conftest import node_configs, start_members


def ec_pair(directory: Path, name: str = "k") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = directory / f"{name}.key", directory / f"{name}.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def test_simple_is_the_default_and_member_local() -> None:
    one, other = tokens.parse("simple"), tokens.parse("simple")
    token = one.assign("alice", 3)
    assert one.info(token) == ("alice", None)
    assert other.info(token) is None
    assert one.info(token + "x") is None


def test_jwt_round_trip_with_etcd_claims(tmp_path: Path) -> None:
    priv, pub = ec_pair(tmp_path)
    provider = tokens.parse(f"jwt,pub-key={pub},priv-key={priv},sign-method=ES256,ttl=90s")
    token = provider.assign("alice", 7)
    assert provider.info(token) == ("alice", 7)
    claims = jwt.decode(token, pub.read_bytes(), algorithms=["ES256"])
    assert claims["username"] == "alice"
    assert claims["revision"] == 7
    assert 80 <= claims["exp"] - time.time() <= 91
    # Another member with only the public key verifies it.
    verifier = tokens.parse(f"jwt,pub-key={pub},sign-method=ES256")
    assert verifier.info(token) == ("alice", 7)
    with pytest.raises(EtcdError, match="cannot sign"):
        verifier.assign("bob", 1)


def test_jwt_rejects_forged_expired_and_other_keys(tmp_path: Path) -> None:
    priv, pub = ec_pair(tmp_path)
    other_priv, _ = ec_pair(tmp_path, "other")
    provider = tokens.parse(f"jwt,pub-key={pub},priv-key={priv},sign-method=ES256")
    claims = {"username": "root", "revision": 1, "exp": int(time.time()) + 60}
    forged = jwt.encode(
        claims, serialization.load_pem_private_key(other_priv.read_bytes(), None), "ES256"
    )  # type: ignore[arg-type]
    assert provider.info(forged) is None
    expired = jwt.encode(
        {**claims, "exp": int(time.time()) - 5},
        serialization.load_pem_private_key(priv.read_bytes(), None),  # type: ignore[arg-type]
        "ES256",
    )
    assert provider.info(expired) is None
    head, body, sig = provider.assign("bob", 1).split(".")
    assert provider.info(f"{head}.{body}x.{sig}") is None
    assert provider.info("not a token") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "'bogus' is not 'simple' or 'jwt,...'"),
        ("jwt,sign-method=RS256", "needs pub-key and/or priv-key"),
        ("jwt,pub-key=/nonexistent.pem,sign-method=RS256", "/nonexistent.pem: No such file"),
        ("jwt,pub-key=PUB,sign-method=XX1", "sign-method='XX1' is not one of RS256"),
        ("jwt,pub-key=PUB,sign-method=ES256,colour=red", "unknown option 'colour=red'"),
        ("jwt,pub-key=PUB,sign-method=ES256,ttl=5 minutes", "ttl='5 minutes' is not a duration"),
        ("jwt,pub-key=PRIV,sign-method=ES256", "not a PEM public key"),
        ("jwt,pub-key=OTHER,priv-key=PRIV,sign-method=ES256", "pub-key does not match priv-key"),
    ],
)
def test_bad_specs_say_what_is_wrong(tmp_path: Path, spec: str, message: str) -> None:
    priv, pub = ec_pair(tmp_path)
    _, other = ec_pair(tmp_path, "other")
    spec = spec.replace("OTHER", str(other)).replace("PRIV", str(priv)).replace("PUB", str(pub))
    with pytest.raises(tokens.TokenSpecError, match=message.replace("(", r"\(")):
        tokens.parse(spec)


def test_a_users_simple_tokens_end_when_it_is_deleted_or_its_password_changes(
    tmp_path: Path,
) -> None:
    """etcd's invalidateUser, applied on every member: the user's tokens stop working
    (a user created again with the same name does not inherit them)."""

    async def run() -> None:
        (config,) = node_configs(tmp_path, 1)
        node = StoreNode(config)
        await start_members([node])
        try:
            for name in ("alice", "bob"):
                await node.propose(Kind.USER_ADD, rpcpb.AuthUserAddRequest(name=name))
            alice, bob = node.tokens.assign("alice", 1), node.tokens.assign("bob", 1)
            change = rpcpb.AuthUserChangePasswordRequest(name="alice", password="x")
            await node.propose(Kind.USER_CHANGE_PASSWORD, change)
            assert node.tokens.info(alice) is None
            assert node.tokens.info(bob) == ("bob", None)
            await node.propose(Kind.USER_DELETE, rpcpb.AuthUserDeleteRequest(name="bob"))
            await node.propose(Kind.USER_ADD, rpcpb.AuthUserAddRequest(name="bob"))
            assert node.tokens.info(bob) is None
        finally:
            await node.stop()

    asyncio.run(run())
