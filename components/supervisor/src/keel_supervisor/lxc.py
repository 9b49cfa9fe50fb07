"""LXC as a third runtime: the OCI runtime command line, carried out with LXC's tools.

CoreOS ran its containers on LXC (through Docker), and Debian ships LXC, so Keel offers it
as a runtime plugin beside runc and crun. LXC does not read OCI bundles, so this module
is a small translator that speaks the subset of the OCI runtime command line the
supervisor uses, and runs the container with ``lxc-execute`` (LXC's "run one program"
mode, with its own minimal init):

``run --detach --pid-file F --bundle B ID``
    writes ``<root>/ID/config`` from ``B/config.json``, starts ``lxc-execute`` in the
    background with our stdout and stderr, and writes its pid to F. ``lxc-execute`` exits
    with the program's exit status, so the monitor (a subreaper) treats it as the
    container's process.
``kill ID SIGNAL``, ``exec [--env K=V] [--cwd DIR] ID ARGV``, ``delete [--force] ID``
    through ``lxc-info``/``lxc-attach``/``lxc-stop``.

Run as ``python -m keel_supervisor.lxc --root DIR VERB ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KERNEL_MOUNTS = {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"}


def lxc_config(spec: dict[str, Any], container_id: str) -> str:
    """An LXC configuration with the same effect as an OCI ``config.json``."""
    process = spec["process"]
    lines = [
        f"lxc.uts.name = {spec.get('hostname') or container_id[:12]}",
        f"lxc.rootfs.path = dir:{spec['root']['path']}",
        "lxc.autodev = 1",
        "lxc.mount.auto = proc:mixed sys:ro cgroup:mixed",
        "lxc.console.path = none",
        "lxc.tty.max = 0",
        "lxc.log.level = ERROR",
        f"lxc.cgroup.dir = {spec['linux']['cgroupsPath'].strip('/')}",
        f"lxc.init.cwd = {process.get('cwd', '/')}",
        f"lxc.init.uid = {process['user']['uid']}",
        f"lxc.init.gid = {process['user']['gid']}",
    ]
    if spec["root"].get("readonly"):
        lines.append("lxc.rootfs.options = ro")
    if process.get("noNewPrivileges"):
        lines.append("lxc.no_new_privs = 1")
    caps = [c.removeprefix("CAP_").lower() for c in process["capabilities"]["bounding"]]
    lines.append(f"lxc.cap.keep = {' '.join(caps) or 'none'}")
    lines += [f"lxc.environment = {item}" for item in process.get("env", [])]
    network = [ns for ns in spec["linux"]["namespaces"] if ns["type"] == "network"]
    if not network:
        lines.append("lxc.net.0.type = none")  # the host's network
    elif network[0].get("path"):
        lines.append("lxc.net.0.type = empty")
        lines.append(f"lxc.namespace.share.net = {network[0]['path']}")
    else:
        lines.append("lxc.net.0.type = empty")
    res = spec["linux"].get("resources", {})
    if "memory" in res:
        lines.append(f"lxc.cgroup.memory.limit_in_bytes = {res['memory']['limit']}")
        lines.append(f"lxc.cgroup.memory.memsw.limit_in_bytes = {res['memory']['swap']}")
    if "pids" in res:
        lines.append(f"lxc.cgroup.pids.max = {res['pids']['limit']}")
    if "cpu" in res:
        lines.append(f"lxc.cgroup.cpu.cfs_period_us = {res['cpu']['period']}")
        lines.append(f"lxc.cgroup.cpu.cfs_quota_us = {res['cpu']['quota']}")
    for mount in spec.get("mounts", []):
        if mount["destination"] in KERNEL_MOUNTS or mount.get("type") != "bind":
            continue
        source = Path(mount["source"])
        create = "create=dir" if source.is_dir() else "create=file"
        mode = "ro" if "ro" in mount.get("options", []) else "rw"
        target = mount["destination"].lstrip("/")
        lines.append(f"lxc.mount.entry = {source} {target} none rbind,{mode},{create} 0 0")
    return "\n".join(lines) + "\n"


def _info_pid(root: str, cid: str) -> int | None:
    proc = subprocess.run(
        ["lxc-info", "-n", cid, "-P", root, "-p", "-H"], capture_output=True, text=True, check=False
    )
    text = proc.stdout.strip()
    return int(text) if proc.returncode == 0 and text.isdigit() else None


def run(root: str, args: argparse.Namespace) -> int:
    """Translate the bundle and start ``lxc-execute`` in the background."""
    spec = json.loads((Path(args.bundle) / "config.json").read_text())
    directory = Path(root) / args.id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text(lxc_config(spec, args.id))
    # posix_spawn, not Popen: the program's exit status must stay for the monitor to
    # collect (lxc-execute becomes its child when we exit), so we never reap it here.
    pid = os.posix_spawnp(
        "lxc-execute",
        [
            "lxc-execute",
            "-n",
            args.id,
            "-P",
            root,
            "-f",
            str(directory / "config"),
            "--",
            *spec["process"]["args"],
        ],
        dict(os.environ),
        file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
        setsid=True,
    )
    deadline = time.monotonic() + 30
    while _info_pid(root, args.id) is None:  # running once LXC reports its init
        ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if ended is not None:
            break  # ended already (or failed): its exit status tells
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            print(f"lxc: container {args.id} did not start in 30 s", file=sys.stderr)
            return 1
        time.sleep(0.01)
    Path(args.pid_file).write_text(str(pid))
    return 0


def kill(root: str, args: argparse.Namespace) -> int:
    """Signal the container's init."""
    pid = _info_pid(root, args.id)
    if pid is None:
        print(f"lxc: container {args.id} is not running", file=sys.stderr)
        return 1
    name = args.signal.upper().removeprefix("SIG")
    number = int(name) if name.isdigit() else int(getattr(signal, f"SIG{name}"))
    os.kill(pid, number)
    return 0


def exec_(root: str, args: argparse.Namespace) -> int:
    """Run a program in the running container, with its output on ours."""
    argv = list(args.argv)
    if args.cwd:
        argv = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', args.cwd, *argv]
    env = [a for item in args.env for a in ("--set-var", item)]
    return subprocess.run(
        ["lxc-attach", "-n", args.id, "-P", root, *env, "--", *argv], check=False
    ).returncode


def delete(root: str, args: argparse.Namespace) -> int:
    """Stop (if ``--force``) and forget the container."""
    if _info_pid(root, args.id) is not None:
        if not args.force:
            print(f"lxc: container {args.id} is running", file=sys.stderr)
            return 1
        subprocess.run(
            ["lxc-stop", "-n", args.id, "-P", root, "-k"], capture_output=True, check=False
        )
    shutil.rmtree(Path(root) / args.id, ignore_errors=True)
    return 0


def list_(root: str, args: argparse.Namespace) -> int:
    """Ids of the running containers (``list -q``)."""
    proc = subprocess.run(
        ["lxc-ls", "-P", root, "--running", "-1"], capture_output=True, text=True, check=False
    )
    print(proc.stdout, end="")
    return proc.returncode


def main(argv: list[str]) -> int:
    """Parse the OCI runtime command line."""
    parser = argparse.ArgumentParser(prog="keel-lxc")
    parser.add_argument("--root", default="/run/keel/runtime/lxc")
    parser.add_argument("--log")
    parser.add_argument("--log-format")
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("run")
    p.add_argument("--detach", action="store_true")
    p.add_argument("--pid-file", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("id")
    p = verbs.add_parser("kill")
    p.add_argument("id")
    p.add_argument("signal", nargs="?", default="TERM")
    p = verbs.add_parser("exec")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--cwd")
    p.add_argument("id")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p = verbs.add_parser("delete")
    p.add_argument("--force", action="store_true")
    p.add_argument("id")
    p = verbs.add_parser("list")
    p.add_argument("-q", action="store_true")
    args = parser.parse_args(argv)
    Path(args.root).mkdir(parents=True, exist_ok=True)
    handlers = {"run": run, "kill": kill, "exec": exec_, "delete": delete, "list": list_}
    return handlers[args.verb](args.root, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
