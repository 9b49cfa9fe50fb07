"""Containers from real images of the image store: load, run, pin, rmi (host)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel_supervisor.images import testing as images
from keel_supervisor.testing import DaemonProcess, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]


def test_run_a_loaded_image_with_its_config(daemon: DaemonProcess, tmp_path: Path) -> None:
    base = images.busybox_layer([images.file("bin/false", b"shadowed", 0o755)])
    top = images.layer_tar(
        [
            images.directory("app"),
            images.file("app/msg", b"from the top layer\n"),
            images.whiteout("bin/false"),
        ]
    )
    archive = tmp_path / "app.tar"
    images.write_docker_archive(
        archive,
        [base, top],
        ["keel.test/app:1"],
        Entrypoint=["/bin/sh", "-c"],
        Cmd=["cat msg; echo $GREETING; pwd; test -e /bin/false || echo whited-out; sleep 300"],
        Env=["GREETING=hello", "PATH=/bin"],
        WorkingDir="/app",
    )
    loaded = daemon.keel("load", "-i", str(archive))
    assert "Loaded image: keel.test/app:1" in loaded.stdout
    assert "keel.test/app" in daemon.keel("images").stdout
    daemon.keel("run", "--name", "app", "--network", "none", "keel.test/app:1")
    wait_for(lambda: "whited-out" in daemon.keel("logs", "app").stdout, what="the output")
    assert daemon.keel("logs", "app").stdout == "from the top layer\nhello\n/app\nwhited-out\n"
    inspected = json.loads(daemon.keel("inspect", "app").stdout)[0]
    assert inspected["record"]["image_id"].startswith("sha256:")
    assert len(inspected["record"]["layers"]) == 2
    # The image is pinned while the container exists.
    refused = daemon.keel("rmi", "keel.test/app:1", check=False)
    assert refused.returncode != 0
    assert "app" in refused.stderr or inspected["id"][:12] in refused.stderr
    daemon.keel("rm", "-f", "app")
    daemon.keel("rmi", "keel.test/app:1")
    assert "keel.test/app" not in daemon.keel("images").stdout


def test_unknown_image_is_a_clear_error(daemon: DaemonProcess) -> None:
    failed = daemon.keel("run", "--network", "none", "no.such/image:1", check=False)
    assert failed.returncode != 0
    assert "no.such/image" in failed.stderr
