"""JWT auth tokens (``--auth-token jwt,...``): etcdctl against keel-store and etcd.

The same etcdctl script runs against both with the same key pair; outputs must match.
Tokens must verify with the public key alone and carry etcd's claims, and (keel-store,
3 members) a token issued by one member must work on another.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import jwt
import pytest

from keel_store.pb import rpcgrpc, rpcpb

from .conftest import etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]

SCRIPT: list[list[str]] = [
    ["user", "add", "root", "--new-user-password=rootpw"],
    ["user", "grant-role", "root", "root"],
    ["user", "add", "bob", "--new-user-password=bobpw"],
    ["role", "add", "app"],
    ["role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true"],
    ["user", "grant-role", "bob", "app"],
    ["auth", "enable"],
    ["--user", "root:rootpw", "put", "/app/a", "1"],
    ["--user", "bob:bobpw", "get", "/app/a", "--print-value-only"],
    ["--user", "bob:bobpw", "put", "/other", "x"],
    ["--user", "bob:wrong", "get", "/app/a"],
    ["get", "/app/a"],
    ["--user", "root:rootpw", "auth", "disable"],
]


def keypair(directory: Path, method: str) -> tuple[Path, Path]:
    """A fresh key pair made with openssl, as an operator would."""
    priv, pub = directory / f"{method}.key", directory / f"{method}.pub"
    if method.startswith("RS"):
        gen = ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    else:
        gen = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run([*gen, "-out", str(priv)], check=True, capture_output=True, timeout=60)
    subprocess.run(
        ["openssl", "pkey", "-in", str(priv), "-pubout", "-out", str(pub)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return priv, pub


def flag(priv: Path, pub: Path, method: str, ttl: str = "5m") -> str:
    return f"--auth-token=jwt,pub-key={pub},priv-key={priv},sign-method={method},ttl={ttl}"


def run(endpoint: str) -> list[tuple[int, str, str]]:
    out = []
    for cmd in SCRIPT:
        r = etcdctl(endpoint, *cmd, check=False)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
        out.append((r.returncode, r.stdout.strip(), errors[-1] if errors else ""))
    return out


def authenticate(endpoint: str, user: str, password: str) -> str:
    with grpc.insecure_channel(endpoint) as channel:
        req = rpcpb.AuthenticateRequest(name=user, password=password)
        return str(rpcgrpc.AuthStub(channel).Authenticate(req, timeout=10).token)


def get(endpoint: str, key: bytes, token: str) -> str:
    """``ok:<value>`` or ``CODE: message``."""
    with grpc.insecure_channel(endpoint) as channel:
        try:
            resp = rpcgrpc.KVStub(channel).Range(
                rpcpb.RangeRequest(key=key), metadata=(("token", token),), timeout=10
            )
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return "ok:" + ",".join(kv.value.decode() for kv in resp.kvs)


@pytest.mark.parametrize("method", ["RS256", "ES256"])
def test_jwt_tokens_as_etcd(make_cluster, tmp_path, method) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keypair(tmp_path, method)
    keel = make_cluster(1, extra=[flag(priv, pub, method)])
    etcd = make_cluster(1, binary="etcd", extra=[flag(priv, pub, method)])
    ours, theirs = run(keel.members[0].endpoint), run(etcd.members[0].endpoint)
    assert theirs[8] == (0, "1", ""), theirs  # bob read /app/a with a JWT
    for cmd, mine, ref in zip(SCRIPT, ours, theirs, strict=True):
        assert mine == ref, f"etcdctl {' '.join(cmd)}"
    public = pub.read_bytes()
    for server in (keel, etcd):
        ep = server.members[0].endpoint
        etcdctl(ep, "auth", "enable")
        token = authenticate(ep, "bob", "bobpw")
        claims = jwt.decode(token, public, algorithms=[method])
        assert claims["username"] == "bob"
        assert {"username", "revision", "exp"} <= set(claims)
        forged = jwt.encode({**claims, "username": "root"}, "not-the-key-" * 4, algorithm="HS256")
        assert get(ep, b"/app/a", forged) == "UNAUTHENTICATED: etcdserver: invalid auth token"
        assert get(ep, b"/app/a", token) == "ok:1"


def test_jwt_issued_by_one_member_works_on_another(make_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keypair(tmp_path, "RS256")
    cluster = make_cluster(3, extra=[flag(priv, pub, "RS256", ttl="3s")])
    a, b = cluster.members[0].endpoint, cluster.members[1].endpoint
    etcdctl(a, "user", "add", "root", "--new-user-password=rootpw")
    etcdctl(a, "user", "grant-role", "root", "root")
    etcdctl(a, "put", "k", "v")
    etcdctl(a, "auth", "enable")
    token = authenticate(a, "root", "rootpw")
    assert get(b, b"k", token) == "ok:v"
    # An auth change makes older tokens stale (etcd: authenticate again).
    etcdctl(b, "--user=root:rootpw", "role", "add", "ops")
    assert get(b, b"k", token) == "INVALID_ARGUMENT: etcdserver: revision of auth store is old"
    fresh = authenticate(b, "root", "rootpw")
    assert get(a, b"k", fresh) == "ok:v"
    time.sleep(3.5)  # ttl=3s
    assert get(a, b"k", fresh) == "UNAUTHENTICATED: etcdserver: invalid auth token"
