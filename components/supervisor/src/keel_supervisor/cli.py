"""``keel container ...`` (docker/podman verbs) and ``keel services``.

The docker verbs are also top-level commands (``keel run``, ``keel ps``, ``keel images``
...), the same commands without the group's options. Every verb but ``daemon`` and the
image verbs talks to the supervisor daemon over its socket
(``--socket``, or ``KEEL_SUPERVISOR_SOCKET``); ``daemon`` runs it. ``run`` always starts
the container in the background and prints its id, like ``docker run -d``; follow its
output with ``keel container logs -f``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from keel_supervisor.api import Client, q

DEFAULT_SOCKET = "/run/keel/supervisor.sock"
DEFAULT_CONFIG = "/etc/keel/supervisor.yaml"
DEFAULT_IMAGES = "/var/lib/keel/images"


def _socket(ctx: click.Context) -> str:
    found = ctx.find_object(dict)
    if found:
        return str(found["socket"])
    return os.environ.get("KEEL_SUPERVISOR_SOCKET", DEFAULT_SOCKET)


def client(ctx: click.Context) -> Client:
    """The API client for this invocation's socket."""
    return Client(Path(_socket(ctx)))


def _console() -> Any:
    from rich.console import Console  # noqa: PLC0415 - rich costs `keel run` 0.2 s

    return Console()


def _table(columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(*columns, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*row)
    Console(width=220).print(table)


@click.group("container")
@click.option(
    "--socket",
    envvar="KEEL_SUPERVISOR_SOCKET",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="the supervisor's API socket",
)
@click.option(
    "--images-root",
    envvar="KEEL_IMAGES_ROOT",
    default=DEFAULT_IMAGES,
    show_default=True,
    help="the image store (images, load, pull, rmi)",
)
@click.pass_context
def container(ctx: click.Context, socket: str, images_root: str) -> None:
    """Run and manage containers (docker/podman verbs).

    Containers are handled by the supervisor daemon over its socket; the image verbs work
    on the image store directly (it is safe to share with a running daemon).
    """
    ctx.ensure_object(dict).update(socket=socket, images=images_root)


# The settings' models (pydantic) are imported only when an option needs parsing: the
# import costs `keel run` about a third of its time; the daemon validates the whole config.


def _parse(kind: str, values: tuple[str, ...]) -> list[dict[str, Any]]:
    if not values:
        return []
    from keel_supervisor import model  # noqa: PLC0415

    try:
        return [getattr(model, kind).parse(v).model_dump() for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _restart(text: str) -> dict[str, Any]:
    if text == "no":
        return {"name": "no", "max_retries": 0}
    from keel_supervisor.model import RestartPolicy  # noqa: PLC0415

    try:
        return RestartPolicy.parse(text).model_dump()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--restart") from None


@container.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--name", help="container name (unique)")
@click.option("-e", "--env", multiple=True, help="KEY=VALUE")
@click.option("-p", "--publish", multiple=True, help="[IP:]HOST_PORT:CONTAINER_PORT")
@click.option("-v", "--volume", multiple=True, help="/host/path:/path[:ro] or NAME:/path")
@click.option(
    "--restart", default="no", show_default=True, help="no, on-failure[:N], always, unless-stopped"
)
@click.option("--memory", "-m", help="memory limit (64m, 1g)")
@click.option("--cpus", type=float, help="CPU limit in CPUs (0.5)")
@click.option("--pids-limit", type=int, help="most processes")
@click.option("--network", type=click.Choice(["bridge", "host", "none"]), default="bridge")
@click.option("--read-only", is_flag=True, help="read-only root filesystem")
@click.option("--user", "-u", help="uid[:gid] or name[:group]")
@click.option("--workdir", "-w")
@click.option("--hostname")
@click.option("--entrypoint", help="replace the image's entrypoint")
@click.option("--cap-add", multiple=True)
@click.option("--cap-drop", multiple=True)
@click.option("--health-cmd", help="shell command; exit 0 = healthy")
@click.option("--health-interval", type=float, default=30.0, show_default=True)
@click.option("--health-timeout", type=float, default=30.0, show_default=True)
@click.option("--health-retries", type=int, default=3, show_default=True)
@click.option("--health-start-period", type=float, default=0.0, show_default=True)
@click.option("--stop-timeout", type=float, default=10.0, show_default=True)
@click.option("--service", help="register the published ports under this service name")
@click.option("--label", "-l", multiple=True, help="KEY=VALUE")
@click.option("--rootfs", is_flag=True, help="IMAGE is a directory to use as the root filesystem")
@click.argument("image")
@click.argument("command", nargs=-1)
@click.pass_context
def run_command(ctx: click.Context, /, image: str, command: tuple[str, ...], **opts: Any) -> None:
    """Create and start a container from IMAGE; prints its id."""

    def pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
        out = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{what} {item!r} is not KEY=VALUE")
            out[key] = value
        return out

    restart = _restart(opts["restart"])
    config: dict[str, Any] = {
        "image": str(Path(image).resolve()) if opts["rootfs"] else image,
        "rootfs": opts["rootfs"],
        "name": opts["name"],
        "command": list(command) or None,
        "entrypoint": [opts["entrypoint"]] if opts["entrypoint"] is not None else None,
        "env": pairs(opts["env"], "--env"),
        "labels": pairs(opts["label"], "--label"),
        "ports": _parse("PortMapping", opts["publish"]),
        "volumes": _parse("Mount", opts["volume"]),
        "restart": restart,
        "resources": {"memory": opts["memory"], "cpus": opts["cpus"], "pids": opts["pids_limit"]},
        "network": opts["network"],
        "read_only": opts["read_only"],
        "user": opts["user"],
        "workdir": opts["workdir"],
        "hostname": opts["hostname"],
        "cap_add": list(opts["cap_add"]),
        "cap_drop": list(opts["cap_drop"]),
        "stop_timeout": opts["stop_timeout"],
        "service": opts["service"],
    }
    if opts["health_cmd"]:
        from keel_supervisor.model import HealthCheck  # noqa: PLC0415

        config["healthcheck"] = HealthCheck(
            test=["/bin/sh", "-c", opts["health_cmd"]],
            interval=opts["health_interval"],
            timeout=opts["health_timeout"],
            retries=opts["health_retries"],
            start_period=opts["health_start_period"],
        ).model_dump()
    answer = client(ctx).request("POST", "/containers", {"config": config})
    click.echo(answer["id"])


@container.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="include ended containers")
@click.option("-q", "--quiet", is_flag=True, help="ids only")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ps_command(ctx: click.Context, show_all: bool, quiet: bool, as_json: bool) -> None:
    """List containers."""
    rows = client(ctx).request("GET", "/containers" + ("?all=1" if show_all else ""))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif quiet:
        for row in rows:
            click.echo(row["id"][:12])
    else:
        _table(
            ["CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS", "PORTS"],
            [
                [
                    r["id"][:12],
                    r["name"],
                    r["image"],
                    r["command"],
                    r["status"],
                    ", ".join(r["ports"]),
                ]
                for r in rows
            ],
        )


@container.command("logs")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option("--tail", default="all", help="only the last N lines")
@click.option("--since", help="10m, 1h, a Unix time or an ISO date-time")
@click.option("-t", "--timestamps", is_flag=True)
@click.argument("container_ref", metavar="CONTAINER")
@click.pass_context
def logs_command(  # noqa: PLR0917 - click passes options positionally
    ctx: click.Context,
    container_ref: str,
    follow: bool,
    tail: str,
    since: str | None,
    timestamps: bool,
) -> None:
    """Print a container's output."""
    params = [f"tail={q(tail)}"] + ([f"since={q(since)}"] if since else [])
    url = f"/containers/{q(container_ref)}/logs?" + "&".join(params)
    api = client(ctx)
    lines = api.stream(url + "&follow=1") if follow else api.request("GET", url)
    for line in lines:
        out = sys.stdout if line["stream"] == "stdout" else sys.stderr
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(line["time"])) + "Z "
            if timestamps
            else ""
        )
        out.write(stamp + line["text"])
        out.flush()


@container.command("start")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@click.pass_context
def start_command(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Start stopped containers."""
    for ref in refs:
        client(ctx).request("POST", f"/containers/{q(ref)}/start")
        click.echo(ref)


@container.command("stop")
@click.option("-t", "--time", "timeout", type=float, help="seconds before KILL")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@click.pass_context
def stop_command(ctx: click.Context, refs: tuple[str, ...], timeout: float | None) -> None:
    """Stop containers: stop signal, then KILL after the timeout."""
    for ref in refs:
        client(ctx).request("POST", f"/containers/{q(ref)}/stop", {"timeout": timeout})
        click.echo(ref)


@container.command("kill")
@click.option("-s", "--signal", "sig", default="KILL", show_default=True)
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@click.pass_context
def kill_command(ctx: click.Context, refs: tuple[str, ...], sig: str) -> None:
    """Send a signal to containers (their restart policy then applies)."""
    for ref in refs:
        client(ctx).request("POST", f"/containers/{q(ref)}/kill", {"signal": sig})
        click.echo(ref)


@container.command("rm")
@click.option("-f", "--force", is_flag=True, help="stop it first if it runs")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@click.pass_context
def rm_command(ctx: click.Context, refs: tuple[str, ...], force: bool) -> None:
    """Remove containers."""
    for ref in refs:
        client(ctx).request("DELETE", f"/containers/{q(ref)}" + ("?force=1" if force else ""))
        click.echo(ref)


@container.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-e", "--env", multiple=True, help="KEY=VALUE")
@click.option("-w", "--workdir")
@click.argument("container_ref", metavar="CONTAINER")
@click.argument("command", nargs=-1, required=True)
@click.pass_context
def exec_command(
    ctx: click.Context,
    container_ref: str,
    command: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str | None,
) -> None:
    """Run a command in a running container; exits with its status."""
    answer = client(ctx).request(
        "POST",
        f"/containers/{q(container_ref)}/exec",
        {"argv": list(command), "env": list(env), "workdir": workdir},
    )
    sys.stdout.buffer.write(base64.b64decode(answer["stdout"]))
    sys.stderr.buffer.write(base64.b64decode(answer["stderr"]))
    sys.stdout.flush()
    ctx.exit(answer["exit_code"])


@container.command("apps")
@click.pass_context
def apps_command(ctx: click.Context) -> None:
    """Declarative apps and the app files the daemon rejected (exit 1 if any)."""
    answer = client(ctx).request("GET", "/apps")
    _table(["APP", "CONTAINER ID"], [[n, c[:12]] for n, c in sorted(answer["apps"].items())])
    for problem in answer["problems"]:
        click.secho(f"rejected: {problem}", fg="red", err=True)
    if answer["problems"]:
        ctx.exit(1)


@container.command("inspect")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@click.pass_context
def inspect_command(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Everything known about containers, as JSON."""
    docs = [client(ctx).request("GET", f"/containers/{q(ref)}") for ref in refs]
    click.echo(json.dumps(docs, indent=2))


def _store(ctx: click.Context) -> Any:
    from keel_supervisor.images import ImageStore  # noqa: PLC0415 - only image verbs need it

    found = ctx.find_object(dict)
    root = found["images"] if found else os.environ.get("KEEL_IMAGES_ROOT", DEFAULT_IMAGES)
    return ImageStore(Path(root))


@container.command("images")
@click.option("-q", "--quiet", is_flag=True, help="ids only")
@click.pass_context
def images_command(ctx: click.Context, quiet: bool) -> None:
    """List images."""
    from keel_supervisor.images import commands  # noqa: PLC0415

    commands.images(_store(ctx), _console(), quiet=quiet)


@container.command("load")
@click.option("-i", "--input", "archive", required=True, type=click.Path(exists=True))
@click.pass_context
def load_command(ctx: click.Context, archive: str) -> None:
    """Load images from a docker save / podman save archive or an OCI layout."""
    from keel_supervisor.images import commands  # noqa: PLC0415

    commands.load(_store(ctx), Path(archive), _console())


@container.command("pull")
@click.option("--insecure", is_flag=True, help="plain HTTP registry")
@click.option("--creds", help="USER:PASSWORD for the registry")
@click.argument("reference")
@click.pass_context
def pull_command(ctx: click.Context, reference: str, insecure: bool, creds: str | None) -> None:
    """Pull an image from an OCI distribution registry."""
    from keel_supervisor.images import commands  # noqa: PLC0415

    commands.pull(_store(ctx), reference, _console(), insecure=insecure, creds=creds)


@container.command("rmi")
@click.option("-f", "--force", is_flag=True, help="even if a container uses it")
@click.argument("refs", nargs=-1, required=True, metavar="IMAGE...")
@click.pass_context
def rmi_command(ctx: click.Context, refs: tuple[str, ...], force: bool) -> None:
    """Remove images (refused while a container uses one, unless --force)."""
    from keel_supervisor.images import commands  # noqa: PLC0415

    commands.rmi(_store(ctx), list(refs), _console(), force=force)


@container.command("daemon")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="settings (YAML); optional",
)
@click.option("--root", type=click.Path(path_type=Path), help="override: state directory")
@click.option("--apps-dir", type=click.Path(path_type=Path), help="override: app definitions")
@click.option("--etcd", multiple=True, help="override: store endpoint host:port")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def daemon_command(  # noqa: PLR0917 - click passes options positionally
    ctx: click.Context,
    config_file: Path,
    root: Path | None,
    apps_dir: Path | None,
    etcd: tuple[str, ...],
    verbose: bool,
) -> None:
    """Run the supervisor daemon (what the keel-supervisor unit starts)."""
    import logging  # noqa: PLC0415 - only the daemon needs these

    from keel_core.config import load_file  # noqa: PLC0415
    from keel_supervisor.daemon import Settings, serve  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    settings = load_file(config_file, Settings) if config_file.exists() else Settings()
    updates: dict[str, Any] = {}
    source = ctx.parent.get_parameter_source("socket") if ctx.parent else None
    if source is not None and source.name != "DEFAULT":
        updates["socket"] = Path(_socket(ctx))
    if root:
        updates["root"] = root
    if apps_dir:
        updates["apps_dir"] = apps_dir
    if etcd:
        updates["etcd"] = list(etcd)
    serve(settings.model_copy(update=updates))


@click.command("services")
@click.option("--socket", envvar="KEEL_SUPERVISOR_SOCKET", default=DEFAULT_SOCKET)
def services_command(socket: str) -> None:
    """List the services this node registered in the store."""
    rows = Client(Path(socket)).request("GET", "/services")
    _table(
        ["SERVICE", "KEY", "HOST", "PORT", "CONTAINER"],
        [[r["service"], r["key"], r["host"], str(r["port"]), r["container"][:12]] for r in rows],
    )


TOP_LEVEL = (
    "run",
    "ps",
    "logs",
    "start",
    "stop",
    "kill",
    "rm",
    "exec",
    "inspect",
    "images",
    "load",
    "pull",
    "rmi",
)
"""Verbs also offered as ``keel <verb>``, docker-style (``keel container <verb>`` always works)."""
