"""Stages ``pydeps`` and ``pykeel``: the Python code of an image, installed in /usr/lib/keel/python.

Two cached layers, so that a change to one component's code rebuilds only the small one:

``pydeps``  third-party wheels (cp311 manylinux x86_64, pinned by constraints.txt), installed
            with pip from the shared wheel cache (``<cache>/image/wheels``; downloaded from the
            configured index only when a pin is not there yet, so warm builds need no network)
``pykeel``  wheels of the Keel distributions built from this source tree (their PEP 517 build
            backend in a cached build environment, SOURCE_DATE_EPOCH set), unpacked

Both are stripped (tests, stubs, console scripts with build paths, RECORD/INSTALLER) and
precompiled by a host Python of the image's minor version with ``unchecked-hash`` pycs: /usr
is read-only, and these do not depend on file times. :func:`install` copies both into the
tree, adds ``keel.pth`` to Debian's dist-packages (so ``python3 -m keel_store.daemon``
works) and writes the console scripts into ``/usr/lib/keel/bin`` linked from ``/usr/bin``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from keel_image import tools
from keel_image.cache import StageCache, code_digest, digest, file_digest
from keel_image.errors import BuildError
from keel_image.pydists import KeelDistribution, PythonPlan, normalize, requirement_name

PREFIX = "/usr/lib/keel/python"
BIN = "/usr/lib/keel/bin"
PTH = "usr/lib/python3/dist-packages/keel.pth"
TARGET = (3, 11)
"""Python of Debian bookworm's python3: wheels are cp311 and pycs are 3.11's."""
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"]
"""Wheel platforms bookworm's glibc 2.36 runs."""
VERSION = 1

STRIP_DIRS = {"tests", "test", "testing", "__pycache__", "bin"}
STRIP_SUFFIXES = (".pyi", ".pyx", ".pxd", ".c", ".h", ".cpp")
STRIP_META = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def _check_host() -> None:
    if sys.version_info[:2] != TARGET:
        raise BuildError(
            "pykeel",
            f"the host Python is {sys.version_info[0]}.{sys.version_info[1]}; the image's "
            f"python3 is {TARGET[0]}.{TARGET[1]} and its pycs must be compiled by that minor",
            "run the build from a Python 3.11 environment (Debian bookworm's python3)",
        )


def _pip(python: Path, *args: str | Path, stage: str, hint: str = "") -> str:
    """Run pip with ``python`` (the tool venv's: the builder's own may have no pip, as uv's)."""
    return tools.run(
        [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        stage=stage,
        hint=hint,
    )


def _strip(site: Path) -> None:
    """Remove what the guest never runs; metadata that differs between installs."""
    for dirpath, dirnames, filenames in os.walk(site, topdown=True):
        here = Path(dirpath)
        depth = len(here.relative_to(site).parts)
        for d in list(dirnames):
            # Top-level "bin" holds console scripts with this host's interpreter path.
            if d in STRIP_DIRS and (d != "bin" or depth == 0):
                shutil.rmtree(here / d)
                dirnames.remove(d)
        for name in filenames:
            if name.endswith(STRIP_SUFFIXES) or (
                here.name.endswith(".dist-info") and name in STRIP_META
            ):
                (here / name).unlink()


def _strip_symbols(site: Path, stage: str) -> None:
    """Drop the debug symbols manylinux extensions ship (zstandard's 12 MB -> 1 MB)."""
    objects = sorted(p for p in site.rglob("*.so*") if p.is_file() and not p.is_symlink())
    if objects:
        tools.require("strip", stage=stage)
        tools.run(["strip", "--strip-unneeded", *objects], stage=stage)


def _compile(site: Path, stage: str) -> None:
    tools.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            site,
            "-p",
            PREFIX,
            site,
        ],
        stage=stage,
        hint="a distribution ships a .py file Python 3.11 cannot compile",
    )


def deps_key(plan: PythonPlan) -> str:
    """Cache key of the ``pydeps`` layer."""
    return digest(plan.deps_key(), VERSION, code_digest(sys.modules[__name__]), PLATFORMS)


def keel_key(plan: PythonPlan, epoch: int) -> str:
    """Cache key of the ``pykeel`` layer."""
    return digest(plan.keel_key(), VERSION, code_digest(sys.modules[__name__]), epoch)


def deps_layer(plan: PythonPlan, cache: StageCache) -> Path:
    """The cached ``pydeps`` layer (``site/`` inside) for ``plan``'s third-party requirements."""
    key = deps_key(plan)
    if hit := cache.lookup("pydeps", key):
        return hit
    _check_host()
    wheels = cache.root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    target: list[str | Path] = [
        "--only-binary=:all:",
        *[f"--platform={p}" for p in PLATFORMS],
        f"--python-version={TARGET[0]}.{TARGET[1]}",
        "--implementation=cp",
        "-c",
        str(plan.constraints),
    ]
    python = _pip_python(cache)
    with cache.produce("pydeps", key) as work:
        site = work / "site"
        offline: list[str | Path] = [
            "install",
            "--no-index",
            "--find-links",
            wheels,
            "--target",
            site,
            *target,
        ]
        try:
            _pip(python, *offline, *plan.requirements, stage="pydeps")
        except BuildError:
            shutil.rmtree(site, ignore_errors=True)
            try:
                _pip(
                    python,
                    "download",
                    "-q",
                    "-d",
                    wheels,
                    *target,
                    *plan.requirements,
                    stage="pydeps",
                )
            except BuildError as exc:
                raise _no_wheel(exc, plan) from None
            _pip(python, *offline, *plan.requirements, stage="pydeps")
        _strip(site)
        _strip_symbols(site, "pydeps")
        _compile(site, "pydeps")
        names = sorted(requirement_name(r) for r in plan.requirements)
        (work / "requirements.json").write_text(json.dumps(names, indent=1))
    cache.prune("pydeps")
    return cache.path("pydeps", key)


def _no_wheel(exc: BuildError, plan: PythonPlan) -> BuildError:
    """pip found no wheel: name the distribution, who needs it and the fix."""
    m = (
        re.search(r"No matching distribution found for (\S+)", exc.output)
        or re.search(r"Could not find a version that satisfies the requirement (\S+)", exc.output)
        or re.search(r"Cannot install (\S+) because", exc.output)  # the pin excludes it
    )
    if not m:
        return exc
    name = requirement_name(m.group(1))
    pins = [
        line.strip()
        for line in plan.constraints.read_text().splitlines()
        if line.strip() and not line.startswith("#") and requirement_name(line) == name
    ]
    pin = pins[0] if pins else m.group(1)
    return BuildError(
        "pydeps",
        f"no cp{TARGET[0]}{TARGET[1]} manylinux x86_64 wheel of {pin} that fits the "
        f"requirements ({plan.who_needs(name)}) in the configured index",
        f"pin a version of {name} that has such a wheel in {plan.constraints}, or drop the "
        "dependency from the pyproject.toml that lists it",
        output=exc.output,
    )


def _venv(cache: StageCache, key: str, stage: str, install: list[str | Path], hint: str) -> Path:
    """A cached venv (``<cache>/python-build/<key>``) with ``install`` pip-installed, made once.

    Made aside and renamed into place: builds sharing the cache never see half a venv.
    ``python -m venv`` seeds pip from the interpreter's own ensurepip (no index needed).
    """
    env = cache.root / "python-build" / key
    if (env / "ok").exists():
        return env
    env.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=env.parent))
    try:
        tools.run([sys.executable, "-m", "venv", work], stage=stage)
        if install:
            tools.run(
                [work / "bin/python", "-m", "pip", "install", "-q",
                 "--disable-pip-version-check", *install],
                stage=stage,
                hint=hint,
            )  # fmt: skip
        (work / "ok").write_text("")
        shutil.rmtree(env, ignore_errors=True)  # a leftover without "ok"
        try:
            work.rename(env)
        except OSError:  # another build renamed its own first
            if not (env / "ok").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return env


def _pip_python(cache: StageCache) -> Path:
    """A Python with pip for the ``pydeps`` layer.

    The Python running the build may have none (uv-made virtualenvs, as nox's sessions
    are, have no pip), so pip comes from a venv seeded by ensurepip: offline, and the same
    pip for a given interpreter.
    """
    return _venv(cache, digest("pip", sys.version), "pydeps", [], "") / "bin/python"


def _build_env(plan: PythonPlan, cache: StageCache) -> Path:
    """A venv with the Keel distributions' build backends (hatchling, ...), made once."""
    requires = sorted({r for d in plan.keel for r in d.build_requires})
    key = digest("buildenv", requires, file_digest(plan.constraints), sys.version)
    return _venv(
        cache,
        key,
        "pykeel",
        ["-c", plan.constraints, *requires],
        f"the build backends {', '.join(requires)} must install from the configured index",
    )


BUILD_WHEEL = (
    "import sys, importlib; "
    "backend = importlib.import_module(sys.argv[1]); "
    "print(backend.build_wheel(sys.argv[2]))"
)


def _build_wheel(dist: KeelDistribution, env: Path, out: Path, epoch: int) -> Path:
    import tomllib  # noqa: PLC0415

    data = tomllib.loads((dist.root / "pyproject.toml").read_text(encoding="utf-8"))
    backend = data.get("build-system", {}).get("build-backend", "setuptools.build_meta")
    stdout = tools.run(
        [env / "bin/python", "-c", BUILD_WHEEL, backend, out],
        stage="pykeel",
        cwd=dist.root,
        env={"SOURCE_DATE_EPOCH": str(epoch), "PYTHONDONTWRITEBYTECODE": "1"},
        hint=f"building a wheel of {dist.name} from {dist.root} failed; "
        f"try `pip wheel --no-deps {dist.root}` to see why",
    )
    return out / stdout.strip().splitlines()[-1]


def keel_layer(plan: PythonPlan, cache: StageCache, epoch: int) -> Path:
    """The cached ``pykeel`` layer: ``site/`` and ``scripts.json`` (command -> entry point)."""
    key = keel_key(plan, epoch)
    if hit := cache.lookup("pykeel", key):
        return hit
    _check_host()
    env = _build_env(plan, cache)
    with cache.produce("pykeel", key) as work:
        site = work / "site"
        site.mkdir()
        built = work / "wheels"
        built.mkdir()
        scripts: dict[str, list[str]] = {}
        for dist in plan.keel:
            wheel = _build_wheel(dist, env, built, epoch)
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            for command, target in dist.scripts:
                scripts[command] = [dist.name, target]
        shutil.rmtree(built)
        _strip(site)
        _compile(site, "pykeel")
        (work / "scripts.json").write_text(json.dumps(scripts, indent=1, sort_keys=True))
    cache.prune("pykeel")
    return cache.path("pykeel", key)


def installed(layers: list[Path]) -> list[dict[str, str]]:
    """Name and version of every distribution in the layers (for the manifest), sorted."""
    out = []
    for layer in layers:
        for meta in (layer / "site").glob("*.dist-info/METADATA"):
            fields = dict(
                line.split(": ", 1)
                for line in meta.read_text(encoding="utf-8").split("\n\n", 1)[0].splitlines()
                if ": " in line
            )
            out.append({"name": normalize(fields["Name"]), "version": fields["Version"]})
    return sorted(out, key=lambda d: d["name"])


def wrapper(command: str, dist: str, target: str) -> bytes:
    """A console script for the guest's python3 (``-I``: no user site, no PYTHON* env)."""
    module, _, attr = target.partition(":")
    head, *rest = attr.split(".") if attr else ["main"]
    call = ".".join([head, *rest])
    return (
        "#!/usr/bin/python3 -I\n"
        f"# {command}: console script of {dist}, installed in {PREFIX} by keel-image.\n"
        "import sys\n\n"
        f"from {module} import {head}\n\n"
        f"sys.exit({call}())\n"
    ).encode()


LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib")


def needed(library: Path, stage: str) -> list[str]:
    """The DT_NEEDED entries of an ELF shared object (``readelf -d``)."""
    out = tools.run(["readelf", "-d", "-W", library], stage=stage)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _check_libraries(tree: Path, site: Path, stage: str) -> None:
    """Every shared library a wheel's extension links is in the image or in the wheel."""
    tools.require("readelf", stage=stage)
    objects = sorted(p for p in site.rglob("*.so*") if p.is_file() and not p.is_symlink())
    vendored = {p.name for p in objects}
    system = {p.name for d in LIBRARY_DIRS if (tree / d).is_dir() for p in (tree / d).iterdir()}
    missing: dict[str, list[str]] = {}
    for obj in objects:
        for lib in needed(obj, stage):
            if lib not in vendored and lib not in system:
                missing.setdefault(lib, []).append(str(obj.relative_to(site)))
    if missing:
        lines = "; ".join(
            f"{lib} (needed by {', '.join(who[:3])})" for lib, who in sorted(missing.items())
        )
        raise BuildError(
            stage,
            f"shared libraries missing from the image for {PREFIX}: {lines}",
            "add the Debian package that ships each library to the contribution's packages "
            "(e.g. libstdc++6 for libstdc++.so.6)",
        )


def install(tree: Path, layers: list[Path], stage: str) -> list[str]:
    """Copy the layers' ``site/`` into ``tree``; write keel.pth and console scripts.

    Returns the commands installed in /usr/bin. A command whose /usr/bin name another
    contribution already ships stays in /usr/lib/keel/bin only (keel-base's ``keel``
    dispatcher runs /usr/lib/keel/bin/keel for the commands it has no script for).
    """
    dest = tree / PREFIX.lstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        tools.run(["cp", "-a", "--link", f"{layer / 'site'}/.", dest], stage=stage)
    _check_libraries(tree, dest, stage)
    # python3.11's binfmt rule (run .pyc files directly) needs binfmt_misc, which the image's
    # pruned kernel lacks: systemd-binfmt would fail at every boot. Nothing runs .pyc files.
    for rule in (tree / "usr/lib/binfmt.d").glob("python3*.conf"):
        rule.unlink()
    pth = tree / PTH
    pth.parent.mkdir(parents=True, exist_ok=True)
    pth.write_text(PREFIX + "\n")
    bindir = tree / BIN.lstrip("/")
    bindir.mkdir(parents=True, exist_ok=True)
    linked: list[str] = []
    for layer in layers:
        if not (layer / "scripts.json").exists():
            continue
        scripts: dict[str, list[str]] = json.loads((layer / "scripts.json").read_text())
        for command, (dist, target) in sorted(scripts.items()):
            script = bindir / command
            script.write_bytes(wrapper(command, dist, target))
            script.chmod(0o755)
            public = tree / "usr/bin" / command
            if public.exists() or public.is_symlink():
                if command != "keel":
                    raise BuildError(
                        stage,
                        f"console script {command!r} of {dist} collides with /usr/bin/{command} "
                        "from a Debian package or another contribution",
                        f"rename the script in {dist}'s [project.scripts]",
                    )
                continue
            public.symlink_to(f"../lib/keel/bin/{command}")
            linked.append(command)
    return linked
