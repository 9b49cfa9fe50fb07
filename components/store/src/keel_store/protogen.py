"""Generate the etcd v3 gRPC stubs from etcd's own protos, as Debian ships them.

Keel speaks etcd's wire protocol, so its messages must be etcd's: same packages
(``etcdserverpb``, ``mvccpb``, ``authpb``, ``v3lockpb``, ``v3electionpb``), same field
numbers, same method paths (``/etcdserverpb.KV/Range``, ``/v3lockpb.Lock/Lock``). Rather
than copy another client's generated modules we compile the originals from
``golang-etcd-server-dev`` (etcd 3.4.23) after stripping the ``gogoproto`` and
``google.api`` options, which only affect Go code generation.

This module is stdlib-only at import time so that the hatch build hook can load it by
path; it needs ``grpcio-tools`` only when it actually compiles. Run it by hand with
``python -m keel_store.protogen`` after changing it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

ETCD_SRC = Path(os.environ.get("KEEL_ETCD_PROTO_ROOT", "/usr/share/gocode/src/go.etcd.io/etcd"))
"""Where ``golang-etcd-server-dev`` installs etcd's sources."""

PACKAGE = "keel_store._generated"
PROTOS = {
    # etcd import path -> (source under ETCD_SRC, target package directory)
    "etcd/mvcc/mvccpb/kv.proto": ("mvcc/mvccpb/kv.proto", "mvccpb"),
    "etcd/auth/authpb/auth.proto": ("auth/authpb/auth.proto", "authpb"),
    "etcd/etcdserver/etcdserverpb/rpc.proto": ("etcdserver/etcdserverpb/rpc.proto", "etcdserverpb"),
    # etcd's Lock and Election services (v3lock, v3election), served on the client port.
    "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.proto": (
        "etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "v3lockpb",
    ),
    "etcd/etcdserver/api/v3election/v3electionpb/v3election.proto": (
        "etcdserver/api/v3election/v3electionpb/v3election.proto",
        "v3electionpb",
    ),
    # gRPC's health service, which etcd registers on the client port (grpc-go's copy,
    # shipped by golang-google-grpc-dev, a dependency of golang-etcd-server-dev).
    "grpc/health/v1/health.proto": (
        "../../google.golang.org/grpc/debian/missing-sources/grpc/grpc-proto/master/"
        "grpc/health/v1/health.proto",
        "healthpb",
    ),
}

_GOGO_IMPORT = re.compile(r'^import\s+"gogoproto/gogo\.proto";\s*$', re.M)
_GOOGLE_IMPORT = re.compile(r'^import\s+"google/api/annotations\.proto";\s*$', re.M)
_GOGO_OPTION = re.compile(r"^\s*option\s+\(gogoproto\.[^;]*;\s*$", re.M)
_FIELD_GOGO = re.compile(r"\s*\[\s*\(gogoproto\.[^\]]*\]")
_HTTP_OPTION = re.compile(r"option\s+\(google\.api\.http\)\s*=\s*\{")


def _strip_http_options(text: str) -> str:
    """Drop every ``option (google.api.http) = {...};`` (bodies nest: additional_bindings)."""
    out: list[str] = []
    pos = 0
    while match := _HTTP_OPTION.search(text, pos):
        out.append(text[pos : match.start()])
        depth, i = 1, match.end()
        while depth:
            if i >= len(text):
                raise ValueError("protogen: unbalanced braces in a google.api.http option")
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        pos = text.index(";", i) + 1
    out.append(text[pos:])
    return "".join(out)


def strip(text: str) -> str:
    """Remove Go-only options and rewrite etcd import paths to our package layout."""
    text = _GOGO_IMPORT.sub("", text)
    text = _GOOGLE_IMPORT.sub("", text)
    text = _GOGO_OPTION.sub("", text)
    text = _FIELD_GOGO.sub("", text)
    text = _strip_http_options(text)
    for etcd_path, (_, pkg) in PROTOS.items():
        name = etcd_path.rsplit("/", 1)[1]
        text = text.replace(f'"{etcd_path}"', f'"{PACKAGE.replace(".", "/")}/{pkg}/{name}"')
    if "gogoproto" in text or "google.api" in text:
        raise ValueError("protogen: a gogoproto/google.api option survived stripping")
    return text


def generate(out_root: Path, etcd_src: Path = ETCD_SRC) -> list[Path]:
    """Write ``keel_store/_generated/**`` under ``out_root`` (the ``src`` directory).

    Returns the generated Python files. Raises ``FileNotFoundError`` naming the Debian
    package when etcd's protos are missing.
    """
    from grpc_tools import protoc  # noqa: PLC0415 - build-time only

    target = out_root.joinpath(*PACKAGE.split("."))
    with tempfile.TemporaryDirectory(prefix="keel-protogen-") as tmp:
        include = Path(tmp)
        rel_files: list[str] = []
        for etcd_path, (src_rel, pkg) in PROTOS.items():
            src = etcd_src / src_rel
            if not src.is_file():
                raise FileNotFoundError(
                    f"{src}: etcd proto missing; install the Debian package golang-etcd-server-dev"
                )
            name = etcd_path.rsplit("/", 1)[1]
            rel = f"{PACKAGE.replace('.', '/')}/{pkg}/{name}"
            dest = include / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(strip(src.read_text()))
            rel_files.append(rel)
        proto_include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{include}",
            f"-I{proto_include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *rel_files,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
    for directory in [target, *(target / pkg for _, pkg in PROTOS.values())]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated by keel_store.protogen; do not edit."""\n')
    (target / "__init__.py").write_text(_POOL_MODULE)
    for module in target.rglob("*_pb2.py"):
        module.write_text(use_private_pool(module.read_text(), module))
    return sorted(target.rglob("*.py"))


_POOL_MODULE = '''"""Generated by keel_store.protogen; do not edit.

etcd's messages live in this private descriptor pool rather than protobuf's default one,
so that the store's stubs and an etcd client library's (aetcd, etcd3, ...), which declare
the same ``etcdserverpb``/``mvccpb``/``authpb`` symbols, can be imported by one process.
The wire format is unaffected: only field numbers and method paths travel.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''

_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_IMPORTS_MARK = "# @@protoc_insertion_point(imports)"


def use_private_pool(code: str, where: Path) -> str:
    """Make one generated ``*_pb2.py`` register its file in ``POOL`` (see above)."""
    if code.count(_DEFAULT_POOL) != 1 or _IMPORTS_MARK not in code:
        raise RuntimeError(f"protogen: {where}: unexpected protoc output; cannot move it to POOL")
    code = code.replace(_DEFAULT_POOL, "_KEEL_POOL.AddSerializedFile(")
    return code.replace(
        _IMPORTS_MARK, f"from {PACKAGE} import POOL as _KEEL_POOL\n{_IMPORTS_MARK}", 1
    )


def main(argv: list[str]) -> int:
    """Regenerate the stubs in this source tree (or under ``argv[0]``)."""
    out_root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    for path in generate(out_root):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
