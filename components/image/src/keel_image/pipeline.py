"""The build pipeline: named stages, each cached by the hash of its inputs.

    rootfs     Debian packages -> root tree (mmdebstrap)                 cached
    system     contributions, module pruning, factory /etc -> usr.img     cached
               (erofs/squashfs + dm-verity) and root.img (ext4)
    initramfs  busybox + dmsetup + storage modules                        cached
    disk       ESP (GRUB, kernels, slot files), GPT, BIOS boot code       cached
    outputs    platform formats (qcow2 ...) into out/<name>-<version>/

``build()`` is the API the CLI and the harness use. When nothing changed, it returns
the existing output directory after hashing the inputs (about a second).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from keel_image import (
    bootloader,
    customize,
    disk,
    filesystems,
    initramfs,
    kmods,
    manifest,
    pydists,
    pylayers,
    rootfs,
    tools,
)
from keel_image.cache import StageCache, code_digest, digest, file_digest
from keel_image.errors import BuildError
from keel_image.recipe import Recipe, load

log = logging.getLogger("keel.image")

SYSTEM_VERSION = 3
DISK_VERSION = 3


@dataclass(frozen=True)
class BuiltImage:
    """A finished image in ``directory``: ``disk.raw``, ``disk.qcow2``, ``manifest.json``."""

    directory: Path
    disk_raw: Path
    disk_qcow2: Path
    manifest: dict[str, Any]
    definition: Path


class Progress:
    """One line per stage on standard error: name, cached or built, seconds."""

    def __init__(self, enabled: bool) -> None:
        self.console = Console(stderr=True) if enabled else None
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, cached: bool) -> Iterator[None]:
        """Time a stage and show a spinner while it runs."""
        start = time.monotonic()
        if self.console and not cached:
            with self.console.status(f"[bold]{name}[/] ..."):
                yield
        else:
            yield
        took = time.monotonic() - start
        self.times[name] = round(took, 2)
        log.debug("stage %s cached=%s took=%.2f", name, cached, took)
        if self.console:
            state = "[dim]cached[/]" if cached else "[green]built[/]"
            self.console.print(f"  {name:<10} {state} {took:6.1f} s")


def _out_dir(recipe: Recipe, out_dir: Path | None) -> Path:
    base = out_dir if out_dir is not None else Path.cwd() / "out"
    return base / recipe.output_name


def _seed(recipe: Recipe) -> str:
    return f"{recipe.definition.name}"


def build(
    definition_path: str | Path,
    *,
    out_dir: Path | None = None,
    progress: bool = True,
    extra_plugins: Sequence[tuple[str, object]] = (),
    cache: StageCache | None = None,
    platforms: Sequence[str] | None = None,
) -> BuiltImage:
    """Build the image ``definition_path`` describes; return the finished output.

    ``extra_plugins`` registers further pluggy plugins for this build only (test
    variants); their contributions are part of every cache key. ``cache`` defaults to the
    shared cache; ``StageCache(enabled=False)`` rebuilds every stage. ``platforms``
    limits the outputs to these of the definition's platforms.
    """
    recipe = load(definition_path, extra_plugins=extra_plugins)
    cache = cache or StageCache()
    show = Progress(progress)
    d = recipe.definition
    epoch = d.source_date_epoch
    seed = _seed(recipe)

    rootfs_key = rootfs.key(recipe)
    python = pydists.plan(recipe)
    python_keys = (
        {}
        if python.empty
        else {"pydeps": pylayers.deps_key(python), "pykeel": pylayers.keel_key(python, epoch)}
    )
    system_key = digest(
        "system",
        SYSTEM_VERSION,
        code_digest(customize, filesystems, kmods, pylayers),
        rootfs_key,
        recipe.contributions_digest(),
        python_keys,
        recipe.kernel_modules,
        d.usr_filesystem,
        d.compression,
        d.partitions.model_dump(),
        seed,
        epoch,
    )
    initramfs_key = initramfs.key(rootfs_key, epoch)
    grub_inputs = [
        file_digest(bootloader.GRUB_PC / "boot.img"),
        digest(bootloader.grub_cfg().hex()),
        bootloader.COMMON_MODULES,
    ]
    disk_key = digest(
        "disk",
        DISK_VERSION,
        code_digest(bootloader, disk, tools),
        system_key,
        initramfs_key,
        recipe.kernel_args,
        grub_inputs,
        d.partitions.model_dump(),
        d.version,
    )
    wanted = list(platforms) if platforms else [p.name for p in recipe.platforms]
    unknown = sorted(set(wanted) - {p.name for p in recipe.platforms})
    if unknown:
        raise BuildError(
            "outputs",
            f"platform(s) {', '.join(unknown)} not in the definition's platforms",
            f"add them to 'platforms' in {recipe.path} or pick from "
            f"{', '.join(p.name for p in recipe.platforms)}",
        )
    formats = [(p.name, f) for p in recipe.platforms if p.name in wanted for f in p.formats]
    build_key = digest(disk_key, sorted((n, f.name, f.filename) for n, f in formats))
    stage_keys = {
        "rootfs": rootfs_key,
        **python_keys,
        "system": system_key,
        "initramfs": initramfs_key,
        "disk": disk_key,
    }

    target = _out_dir(recipe, out_dir)
    done = _existing(target, build_key)
    if done is not None and cache.enabled:
        if show.console:
            show.console.print(f"  up to date: {target}")
        return BuiltImage(target, target / "disk.raw", target / "disk.qcow2", done, recipe.path)

    rootfs_dir = cache.lookup("rootfs", rootfs_key)
    with show.stage("rootfs", rootfs_dir is not None):
        rootfs_dir = rootfs_dir or rootfs.build(recipe, cache)

    layers: list[Path] = []
    if not python.empty:
        deps_dir = cache.lookup("pydeps", python_keys["pydeps"])
        with show.stage("pydeps", deps_dir is not None):
            layers.append(deps_dir or pylayers.deps_layer(python, cache))
        keel_dir = cache.lookup("pykeel", python_keys["pykeel"])
        with show.stage("pykeel", keel_dir is not None):
            layers.append(keel_dir or pylayers.keel_layer(python, cache, epoch))

    system_dir = cache.lookup("system", system_key)
    with show.stage("system", system_dir is not None):
        system_dir = system_dir or _system(
            recipe, cache, system_key, rootfs_dir, seed, layers=layers
        )
    info = json.loads((system_dir / "info.json").read_text())
    usr = filesystems.UsrImage(
        system_dir / "usr.img",
        info["data_blocks"],
        info["root_hash"],
        info["salt"],
        info["fs_bytes"],
    )

    initrd_dir = cache.lookup("initramfs", initramfs_key)
    with show.stage("initramfs", initrd_dir is not None):
        if initrd_dir is None:
            with cache.produce("initramfs", initramfs_key) as work:
                initramfs.build(
                    rootfs_dir / "tree", info["kernel_version"], work / "initrd.img", epoch=epoch
                )
            cache.prune("initramfs")
            initrd_dir = cache.path("initramfs", initramfs_key)

    disk_dir = cache.lookup("disk", disk_key)
    kernel_args = [*usr.kernel_args, f"keel.usrfs={d.usr_filesystem}", *recipe.kernel_args]
    parts, total, disk_guid = disk.layout(d.partitions.model_dump(), seed)
    with show.stage("disk", disk_dir is not None):
        disk_dir = disk_dir or _disk(
            recipe,
            cache,
            disk_key,
            system_dir=system_dir,
            initrd_dir=initrd_dir,
            usr=usr,
            kernel_args=kernel_args,
            seed=seed,
        )

    with show.stage("outputs", False):
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _copy_sparse(disk_dir / "disk.raw", tmp / "disk.raw")
        outputs = {"disk.raw": "raw"}
        for platform_name, fmt in formats:
            fmt.convert(tmp / "disk.raw", tmp / fmt.filename)
            outputs[fmt.filename] = f"{platform_name}:{fmt.name}"
        digests = {name: file_digest(tmp / name) for name in outputs if name != "disk.raw"}
        digests |= json.loads((disk_dir / "digests.json").read_text())
        data = manifest.make(
            recipe,
            build_key=build_key,
            stage_keys=stage_keys,
            parts=parts,
            disk_guid=disk_guid,
            disk_size=total,
            usr=usr,
            kernel_version=info["kernel_version"],
            kernel_args=kernel_args,
            package_list=manifest.packages(rootfs_dir / "packages.tsv"),
            modules=info["modules"],
            digests=digests,
            outputs=outputs,
            python=pylayers.installed(layers),
        )
        manifest.write(tmp / "manifest.json", data)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    if show.console:
        show.console.print(f"  image: {target}")
    return BuiltImage(target, target / "disk.raw", target / "disk.qcow2", data, recipe.path)


def _existing(target: Path, build_key: str) -> dict[str, Any] | None:
    """The manifest of a complete earlier output with the same key, if there is one."""
    try:
        data: dict[str, Any] = json.loads((target / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if data.get("build_key") != build_key:
        return None
    if not all((target / name).exists() for name in data.get("outputs", {})):
        return None
    return data


def _copy_sparse(src: Path, dst: Path) -> None:
    tools.run(["cp", "--sparse=always", str(src), str(dst)], stage="outputs")


def _normalize_times(tree: Path, epoch: int) -> None:
    """Every file's times set to ``epoch`` (ext4 -d copies them)."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))


def _system(
    recipe: Recipe, cache: StageCache, key: str, rootfs_dir: Path, seed: str, *, layers: list[Path]
) -> Path:
    d = recipe.definition
    with cache.produce("system", key) as work:
        tree = customize.build(recipe, rootfs_dir, work, layers)
        _normalize_times(tree.root, d.source_date_epoch)
        usr = filesystems.make_usr(
            tree.root,
            work / "usr.img",
            fstype=d.usr_filesystem,
            compression=d.compression,
            epoch=d.source_date_epoch,
            seed=seed,
            partition_mib=d.partitions.usr,
            stage="system",
        )
        filesystems.make_root(
            tree.root,
            work / "root.img",
            size_mib=d.partitions.root,
            epoch=d.source_date_epoch,
            seed=seed,
            stage="system",
        )
        info = {
            "kernel_version": tree.kernel_version,
            "data_blocks": usr.data_blocks,
            "root_hash": usr.root_hash,
            "salt": usr.salt,
            "fs_bytes": usr.fs_bytes,
            "modules": {"kept": tree.modules_kept, "removed": tree.modules_removed},
        }
        (work / "info.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(tree.root)
    cache.prune("system")
    return cache.path("system", key)


def _fat_serial(seed: str) -> tuple[str, str]:
    """The ESP's FAT volume serial (for mkfs) and how GRUB spells it (``XXXX-XXXX``)."""
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"keel:{seed}:esp").hex[:8].upper()
    return serial, f"{serial[:4]}-{serial[4:]}"


def _disk(
    recipe: Recipe,
    cache: StageCache,
    key: str,
    *,
    system_dir: Path,
    initrd_dir: Path,
    usr: filesystems.UsrImage,
    kernel_args: list[str],
    seed: str,
) -> Path:
    d = recipe.definition
    epoch = d.source_date_epoch
    with cache.produce("disk", key) as work:
        serial, esp_uuid = _fat_serial(seed)
        core, efi = bootloader.grub_images(work, esp_uuid, stage="disk")
        vmlinuz = (system_dir / "vmlinuz").read_bytes()
        initrd = (initrd_dir / "initrd.img").read_bytes()
        files = {
            "EFI/BOOT/BOOTX64.EFI": efi.read_bytes(),
            "grub/grub.cfg": bootloader.grub_cfg(),
            "keel/grubenv": bootloader.grubenv(
                {"keel_good": "A", "keel_try": "", "keel_tries": "0"}
            ),
            "keel/slot-A.cfg": bootloader.slot_cfg("A", kernel_args),
            "keel/A/vmlinuz": vmlinuz,
            "keel/A/initrd.img": initrd,
        }
        esp = work / "esp.img"
        bootloader.make_esp(
            esp, size_mib=d.partitions.esp, serial=serial, files=files, epoch=epoch, stage="disk"
        )
        parts, total, disk_guid = disk.layout(d.partitions.model_dump(), seed)
        by_label = {p.label: p for p in parts}
        raw = work / "disk.raw"
        disk.write_table(raw, parts, total, disk_guid, stage="disk")
        disk.copy_in(raw, by_label["EFI-SYSTEM"], esp)
        disk.copy_in(raw, by_label["USR-A"], usr.path)
        disk.copy_in(raw, by_label["ROOT"], system_dir / "root.img")
        disk.install_bios_boot(
            raw, by_label["BIOS-BOOT"], bootloader.boot_sector(), core.read_bytes()
        )
        digests = {
            "usr.img": file_digest(usr.path),
            "root.img": file_digest(system_dir / "root.img"),
            "esp.img": file_digest(esp),
            **{
                f"esp:/{name}": hashlib.sha256(data).hexdigest()
                for name, data in sorted(files.items())
                if not name.endswith(("vmlinuz", "initrd.img"))
            },
            "esp:/keel/A/vmlinuz": file_digest(system_dir / "vmlinuz"),
            "esp:/keel/A/initrd.img": file_digest(initrd_dir / "initrd.img"),
        }
        (work / "digests.json").write_text(json.dumps(digests, indent=2, sort_keys=True))
        for tmp in (esp, core, efi, work / "early.cfg"):
            tmp.unlink()
    cache.prune("disk")
    return cache.path("disk", key)
