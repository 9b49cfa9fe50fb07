"""keel-supervisor inside a booted Keel image under QEMU (issue 7's VM test).

One machine of the [store, supervisor] image (``py_image``) is booted for the module and
shared by its tests, in this order: images loaded from archives made on the host (and a
traversal archive refused), the runtime the daemon picks, whiteouts, logs, memory limits
and an OOM kill restarted by policy, a health-check restart, a published port reached from
the host through a QEMU forward, a pull from a registry on the host (reached from the guest
through ``ssh -R``), registrations in the guest's keel-store, and last a declarative app
that comes back after a reboot. Each test cleans up its containers, so one failing leaves
the others meaningful.

Images are written on the host with ``keel_supervisor.images.testing`` (busybox-static
layers, no engine) and copied in over SSH.

In ``smoke`` (so CI runs it): 6 minutes on a quiet 2-core machine under TCG with the
image built in the module's setup (1.8 min of that), 9 at load 6-7 with the image cached.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keel_harness import Machine, RetryTimeout, retry, run_gate
from keel_harness.pytest_plugin import boot_and_gate
from keel_supervisor.images import testing as images

pytestmark = [pytest.mark.vm, pytest.mark.smoke, pytest.mark.timeout(1800)]

WEB_PORT = 8080
"""The guest port the web container is published on (all addresses), forwarded by QEMU."""
BODY = b"served by keel-supervisor in a Keel VM\n"
PULLED_BODY = b"pulled through the tunnel\n"
APPLETS = ("httpd", "rm", "touch", "mkdir")
"""busybox applets on top of those ``busybox_layer`` links."""
GUEST_REGISTRY_PORT = 5000


def _layers(body: bytes) -> list[bytes]:
    """A base with busybox, etc/doomed and etc/kept; a top layer whiting out etc/doomed
    and serving ``body`` from /www."""
    base = images.busybox_layer(
        [images.symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
        + [images.file("etc/doomed", b"lower layer\n"), images.file("etc/kept", b"kept\n")]
    )
    top = images.layer_tar(
        [
            images.whiteout("etc/doomed"),
            images.directory("www"),
            images.file("www/index.html", body),
        ]
    )
    return [base, top]


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Host-made images: ``web`` (docker-archive), ``evil`` (a layer member with ``..``),
    ``pulled`` (an OCI layout for the registry)."""
    where = tmp_path_factory.mktemp("archives")
    config: dict[str, Any] = {
        "Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"],
        "Env": ["PATH=/bin"],
    }
    images.write_docker_archive(where / "web.tar", _layers(BODY), ["keel.test/web:1"], **config)
    evil = images.layer_tar([images.file("../../../../tmp/keel-escape", b"escaped")])
    images.write_docker_archive(where / "evil.tar", [evil], ["keel.test/evil:1"])
    images.write_oci_layout(where / "pulled", _layers(PULLED_BODY), ref_name="v1", **config)
    return {"web": where / "web.tar", "evil": where / "evil.tar", "pulled": where / "pulled"}


@pytest.fixture(scope="module")
def vm(module_machine_factory: Callable[..., Machine], py_image: Path) -> Machine:
    """The [store, supervisor] image, booted and through the gate, for the whole module."""
    machine = module_machine_factory("supervisor", image=py_image, forwards=[WEB_PORT])
    return boot_and_gate(machine)


@pytest.fixture(scope="module")
def web_image(vm: Machine, archives: dict[str, Path]) -> str:
    """``keel load -i`` of the web archive in the guest; returns what it printed."""
    vm.copy_from_host(archives["web"], "/var/tmp/web.tar")
    return vm.succeed("keel load -i /var/tmp/web.tar")


def keel(m: Machine, *args: str) -> str:
    """``keel ARGS`` in the guest; fails the test if it fails."""
    return m.succeed(shlex.join(["keel", *args]))


def inspect(m: Machine, ref: str) -> dict[str, Any]:
    """``keel inspect REF`` as a dict."""
    document: list[dict[str, Any]] = json.loads(keel(m, "inspect", ref))
    return document[0]


def eventually(check: Callable[[bool], Any], what: str, timeout: float = 120) -> Any:
    """:func:`keel_harness.retry`, but running out of time is a test failure (the system did
    not do it), not a harness fault."""
    try:
        return retry(check, timeout=timeout, what=what, interval=2)
    except RetryTimeout as exc:
        raise AssertionError(str(exc)) from None


def until(
    m: Machine, ref: str, ok: Callable[[dict[str, Any]], bool], what: str, timeout: float = 240
) -> dict[str, Any]:
    """Poll ``keel inspect REF`` until ``ok``; a timeout is a test failure naming the last
    state seen (the supervisor did not do it), not a harness fault."""
    seen: dict[str, Any] = {}

    def check(last: bool) -> dict[str, Any] | None:
        seen.update(inspect(m, ref))
        return dict(seen) if ok(seen) else None

    try:
        result: dict[str, Any] = eventually(check, what, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status {seen.get('status_detail')}") from None
    return result


def test_load_lists_the_image_and_refuses_a_traversal_archive(
    vm: Machine, web_image: str, archives: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    request.node.user_properties.append(("boot_to_ssh_supervisor", round(vm.boot_seconds or 0, 1)))
    assert "Loaded image: keel.test/web:1" in web_image
    listed = keel(vm, "images")
    assert "keel.test/web" in listed
    vm.copy_from_host(archives["evil"], "/var/tmp/evil.tar")
    status, out, err = vm.run("keel load -i /var/tmp/evil.tar")
    assert status != 0
    message = out + err
    assert "evil.tar" in message, message  # names the archive
    assert "'../../../../tmp/keel-escape' refused" in message, message  # and the member
    assert "Traceback" not in message
    vm.fail("test -e /tmp/keel-escape")
    assert "keel.test/evil" not in keel(vm, "images")
    assert vm.succeed("find /var/lib/keel/images -name keel-escape") == ""


def test_daemon_uses_runc_on_cgroup2_and_whiteouts_hide_lower_files(
    vm: Machine, web_image: str
) -> None:
    assert vm.succeed("stat -f -c %T /sys/fs/cgroup").strip() == "cgroup2fs"
    vm.succeed("command -v runc", "command -v crun")  # both shipped; runc ranks first
    keel(vm, "run", "--name", "layers", "--network", "none", "keel.test/web:1",
         "sh", "-c", "ls /etc; cat /etc/kept; exec sleep 300")  # fmt: skip
    doc = until(vm, "layers", lambda d: d["state"] == "running", "the layers container")
    assert doc["record"]["runtime"] == "runc"
    state = json.loads(vm.succeed(f"runc --root /run/keel/runtime/runc state {doc['id']}"))
    assert state["status"] == "running"
    assert state["pid"] == doc["status_detail"]["pid"]
    vm.wait_until_succeeds('test "$(keel logs layers | grep -cx kept)" = 2', timeout=120)
    # /etc of the image without etc/doomed, plus the hosts file the supervisor mounts
    assert keel(vm, "logs", "layers").split() == ["hosts", "kept", "passwd", "kept"]
    # the lower layer has the file, the top one the whiteout (a 0/0 character device)
    find = "find /var/lib/keel/images/layers -path '*/root/etc/doomed'"
    assert vm.succeed(f"{find} -type f -exec cat {{}} +") == "lower layer\n"
    assert vm.succeed(f"{find} -type c -exec stat -c %t:%T {{}} +") == "0:0\n"
    keel(vm, "rm", "-f", "layers")


def test_logs_and_tail(vm: Machine, web_image: str) -> None:
    # stdout and stderr are two pipes: the order between them is only kept with a pause
    script = "echo oops >&2; sleep 2; for i in 1 2 3 4 5; do echo line $i; done; exec sleep 300"
    keel(vm, "run", "--name", "talker", "--network", "none", "keel.test/web:1", "sh", "-c", script)
    vm.wait_until_succeeds("keel logs talker | grep -x 'line 5'", timeout=120)
    status, out, err = vm.run("keel logs talker")
    assert (status, out, err) == (0, "".join(f"line {i}\n" for i in range(1, 6)), "oops\n")
    status, out, err = vm.run("keel logs --tail 2 talker")
    assert (status, out, err) == (0, "line 4\nline 5\n", "")
    status, out, err = vm.run("keel logs --tail 6 talker")
    assert (status, out, err) == (0, "".join(f"line {i}\n" for i in range(1, 6)), "oops\n")
    keel(vm, "rm", "-f", "talker")


def test_memory_limit_in_the_cgroup_and_oom_kill_restarted_by_policy(
    vm: Machine, web_image: str
) -> None:
    keel(vm, "run", "--name", "capped", "--network", "none", "--memory", "32m",
         "keel.test/web:1", "sleep", "300")  # fmt: skip
    doc = until(vm, "capped", lambda d: d["state"] == "running", "the capped container")
    cgroup = f"/sys/fs/cgroup/keel/{doc['id']}"
    assert vm.succeed(f"cat {cgroup}/memory.max").strip() == str(32 << 20)
    assert vm.succeed(f"cat {cgroup}/memory.swap.max").strip() == "0"  # no swap past the limit
    assert vm.succeed(f"cat {cgroup}/cgroup.procs").split() == [str(doc["status_detail"]["pid"])]
    keel(vm, "rm", "-f", "capped")
    # sh doubling a string until the 16 MiB limit bites; on-failure:1 restarts it once
    hog = 'echo start; x=aaaaaaaaaaaaaaaa; while :; do x="$x$x"; done'
    keel(vm, "run", "--name", "hog", "--network", "none", "--memory", "16m",
         "--restart", "on-failure:1", "keel.test/web:1", "sh", "-c", hog)  # fmt: skip
    done = until(
        vm, "hog", lambda d: d["state"] == "exited", "two OOM kills (the first restarted)", 420
    )
    detail = done["status_detail"]
    assert (detail["exit_code"], detail["oom_killed"], detail["restarts"]) == (137, True, 1)
    assert vm.succeed("keel logs hog") == "start\nstart\n"
    assert "Memory cgroup out of memory" in vm.succeed("dmesg")
    keel(vm, "rm", "-f", "hog")


FLAKY = "touch /tmp/ok; sleep 6; rm /tmp/ok; exec sleep 300"


def test_failing_health_check_restarts_the_container(vm: Machine, web_image: str) -> None:
    # healthy while /tmp/ok exists; the container removes it after a while, every start
    keel(vm, "run", "--name", "flaky", "--network", "none", "--restart", "always",
         "--health-cmd", "test -e /tmp/ok", "--health-interval", "2", "--health-retries", "2",
         "keel.test/web:1", "sh", "-c", FLAKY)  # fmt: skip
    first = until(vm, "flaky", lambda d: d["status_detail"]["restarts"] >= 1, "a restart", 300)
    assert any(entry["exit_code"] != 0 for entry in first["status_detail"]["health_log"])
    until(vm, "flaky", lambda d: d["status_detail"]["restarts"] >= 2, "a second restart", 300)
    keel(vm, "rm", "-f", "flaky")


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body: bytes = answer.read()
            return body
    except OSError:
        return None


def test_published_port_is_reachable_from_the_host(vm: Machine, web_image: str) -> None:
    keel(vm, "run", "--name", "web", "-p", f"0.0.0.0:{WEB_PORT}:80", "keel.test/web:1")
    until(vm, "web", lambda d: d["state"] == "running", "the web container")
    # host 127.0.0.1:<forward> -> QEMU -> guest's address:8080 -> monitor proxy -> container
    url = f"http://127.0.0.1:{vm.forwarded_port(WEB_PORT)}/index.html"
    body = eventually(lambda last: _get(url), f"{url} from the host")
    assert body == BODY
    # published on every address: the guest's loopback gets it too
    fetch = (
        "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1]).read().decode())"
    )
    local = vm.succeed(
        shlex.join(["python3", "-c", fetch, f"http://127.0.0.1:{WEB_PORT}/index.html"])
    )
    assert local == BODY.decode()
    keel(vm, "rm", "-f", "web")
    eventually(lambda last: _get(url) is None, "the port to close", 60)


@pytest.fixture
def guest_registry(vm: Machine, open_registry: Any, archives: dict[str, Path]) -> Iterator[str]:
    """The host's registry (tests/integration/supervisor/conftest.py) with the ``pulled``
    image in it, as the guest reaches it: 127.0.0.1:5000 through ``ssh -R``."""
    open_registry.push(archives["pulled"], "v1", "keel/pulled:1")
    port = int(open_registry.host.rsplit(":", 1)[1])
    with vm.tunnel_to_host(port, GUEST_REGISTRY_PORT):
        yield f"127.0.0.1:{GUEST_REGISTRY_PORT}"


def test_pull_from_a_registry_on_the_host(vm: Machine, guest_registry: str) -> None:
    ref = f"{guest_registry}/keel/pulled:1"
    pulled = keel(vm, "pull", "--insecure", ref)
    assert f"Pulled: {ref}" in pulled, pulled
    keel(vm, "run", "--name", "pulled", "--network", "none", ref, "cat", "/www/index.html")
    until(vm, "pulled", lambda d: d["state"] == "exited", "the pulled image's container")
    assert keel(vm, "logs", "pulled").encode() == PULLED_BODY
    keel(vm, "rm", "pulled")
    keel(vm, "rmi", ref)


def _etcdctl(endpoint: str, *args: str) -> str:
    done = subprocess.run(
        ["etcdctl", f"--endpoints={endpoint}", "--command-timeout=10s", *args],
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_registration_appears_and_disappears_in_the_store(vm: Machine, web_image: str) -> None:
    # the image's default has no store endpoints: point the daemon at the node's keel-store
    vm.succeed(
        "printf 'etcd: [127.0.0.1:2379]\\nlease_ttl: 4\\n' > /etc/keel/supervisor.yaml",
        "systemctl restart keel-supervisor.service",
    )
    vm.wait_for_unit("keel-supervisor.service")
    vm.wait_until_succeeds("keel services", timeout=120)
    cid = keel(vm, "run", "--name", "svc", "--service", "web", "-p", "8081:80", "keel.test/web:1")
    key = f"/skydns/local/keel/web/{cid.strip()[:12]}"
    listed = vm.wait_until_succeeds(f"keel services | grep -F {key}", timeout=120)
    assert listed.split()[2:4] == ["127.0.0.1", "8081"], listed  # SERVICE KEY HOST PORT ...
    with vm.tunnel_to_guest(2379) as port:
        endpoint = f"127.0.0.1:{port}"
        got = _etcdctl(endpoint, "get", "--prefix", "/skydns/local/keel/web/")
        assert got.splitlines() == [key, json.dumps({"host": "127.0.0.1", "port": 8081})]
        keel(vm, "stop", "-t", "1", "svc")

        def gone(last: bool) -> bool:
            return _etcdctl(endpoint, "get", "--prefix", "--keys-only", "/skydns/").strip() == ""

        eventually(gone, "the registration to be withdrawn", 60)
    assert key not in keel(vm, "services")
    keel(vm, "rm", "svc")


def test_declarative_app_comes_back_after_a_reboot(vm: Machine, web_image: str) -> None:
    vm.succeed(
        "printf '%s\\n' 'image: keel.test/web:1' 'network: none' "
        "'command: [sh, -c, \"echo up; exec sleep 100000\"]' > /etc/keel/apps/greeter.yaml"
    )
    # The supervisor creates the container once it sees the file (1.3 s after it was
    # written in a slow CI run): until then `keel inspect` fails, and `until` takes a
    # failing inspect as final.
    vm.wait_until_succeeds("keel inspect greeter", timeout=120)
    before = until(vm, "greeter", lambda d: d["state"] == "running", "the app to start")
    assert before["config"]["restart"]["name"] == "unless-stopped"
    boot = vm.boot_id()
    vm.reboot()
    assert vm.boot_id() != boot
    run_gate(vm)  # nothing failed on the way up (the OOM kills were in the last boot)
    after = until(vm, "greeter", lambda d: d["state"] == "running", "the app after the reboot")
    assert after["id"] == before["id"]  # the same container, started again by its policy
    booted_at = int(vm.succeed("awk '$1 == \"btime\" {print $2}' /proc/stat"))
    assert before["status_detail"]["started_at"] < booted_at
    assert after["status_detail"]["started_at"] >= booted_at
    pid = after["status_detail"]["pid"]
    assert vm.succeed(f"tr '\\0' ' ' < /proc/{pid}/cmdline").split() == ["sleep", "100000"]
    assert keel(vm, "logs", "greeter") == "up\nup\n"  # one line per boot; logs persist on /var
    assert "greeter" in keel(vm, "container", "apps")
    vm.succeed("rm /etc/keel/apps/greeter.yaml")
    vm.wait_until_succeeds("! keel ps -a | grep -w greeter", timeout=120)
