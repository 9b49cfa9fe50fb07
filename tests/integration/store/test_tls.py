"""Client and peer TLS: a 3-member cluster speaking TLS everywhere, etcdctl with certificates."""

from __future__ import annotations

import pytest

from .conftest import TLSFiles, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]


def test_tls_cluster(make_cluster, tmp_path) -> None:
    tls = TLSFiles(tmp_path / "pki")
    cluster = make_cluster(3, tls=tls)
    a, b = cluster.members[0].endpoint, cluster.members[1].endpoint
    assert etcdctl(a, *tls.etcdctl_args(), "put", "secret", "s3").stdout.strip() == "OK"
    got = etcdctl(b, *tls.etcdctl_args(), "get", "secret", "--print-value-only")
    assert got.stdout.strip() == "s3", "replicated over TLS peer links"
    # Without a client certificate the member refuses (--client-cert-auth).
    r = etcdctl(a, f"--cacert={tls.ca}", "get", "secret", check=False, timeout=30)
    assert r.returncode != 0
    # Plain text to a TLS port fails too.
    r = etcdctl(a, "get", "secret", check=False, timeout=30)
    assert r.returncode != 0
