"""The kernel modules the guest needs, with their dependencies, in load order."""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from vmigrate.errors import ImageBuildError
from vmigrate.guest.elf import elf_sections
from vmigrate.proc import run


def module_depends(blob: bytes) -> list[str]:
    """The `depends=` list of a kernel module's .modinfo section (what modinfo -F depends says)."""
    for item in elf_sections(blob).get(".modinfo", b"").split(b"\0"):
        if item.startswith(b"depends="):
            value = item[len(b"depends=") :].decode()
            return [d for d in value.split(",") if d]
    return []


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressed if the package ships .ko.xz / .ko.gz / .ko.zst."""
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise ImageBuildError("kernel modules are zstd-compressed: apt-get install zstd")
        out = path.with_name(path.name.removesuffix(".zst"))
        run(["zstd", "-q", "-d", "-f", "-o", str(out), str(path)])
        return out.read_bytes()
    return path.read_bytes()


def resolve_modules(module_root: Path, wanted: Iterable[str]) -> list[tuple[str, bytes]]:
    """(name, ELF bytes) of `wanted` and their dependencies, in load order (dependencies first).

    Modules built into the kernel (listed in modules.builtin) are skipped.
    """
    available: dict[str, Path] = {}
    for path in module_root.rglob("*.ko*"):
        if re.search(r"\.ko(\.xz|\.zst|\.gz)?$", path.name):
            available[_module_name(path)] = path
    builtin_file = module_root / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        builtin = {_module_name(Path(line)) for line in builtin_file.read_text().split()}
    ordered: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done:
            return
        if name in chain:
            raise ImageBuildError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in available:
            if name in builtin:
                done.add(name)
                return
            raise ImageBuildError(f"kernel module {name} not found under {module_root}")
        blob = _read_module(available[name])
        for dep in module_depends(blob):
            visit(dep, (*chain, name))
        done.add(name)
        ordered.append((name, blob))

    for name in wanted:
        visit(name, ())
    return ordered
