"""Image references are normalized like docker's."""

from __future__ import annotations

import pytest

from keel_supervisor.images.errors import ImageError
from keel_supervisor.images.reference import familiar, normalize, parse_reference


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("user/app", "docker.io/user/app:latest"),
        ("127.0.0.1:5000/keel/app:v1", "127.0.0.1:5000/keel/app:v1"),
        ("localhost/app", "localhost/app:latest"),
        ("quay.io/a/b/c:t", "quay.io/a/b/c:t"),
        ("app@sha256:" + "a" * 64, "docker.io/library/app@sha256:" + "a" * 64),
    ],
)
def test_normalize(text, canonical):
    assert normalize(text) == canonical


def test_registry_endpoint_and_object():
    ref = parse_reference("127.0.0.1:5000/keel/app:v1")
    assert (ref.endpoint, ref.repository, ref.object) == ("127.0.0.1:5000", "keel/app", "v1")
    assert parse_reference("busybox").endpoint == "registry-1.docker.io"


@pytest.mark.parametrize("bad", ["", "UPPER", "app:bad tag", "app@sha256:12", "a//b", " app"])
def test_bad_references_say_what_is_wrong(bad):
    with pytest.raises(ImageError, match="invalid image reference"):
        parse_reference(bad)


def test_familiar():
    assert familiar("docker.io/library/busybox:latest") == "busybox:latest"
    assert familiar("docker.io/user/app:1") == "user/app:1"
    assert familiar("localhost/app:1") == "localhost/app:1"
