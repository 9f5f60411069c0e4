"""The guest image: Debian's cloud kernel plus a busybox initramfs that runs our static agent.

Nothing is installed on the host: the kernel package is fetched with `apt-get download` and
unpacked with `dpkg-deb -x`, busybox comes from the host's busybox-static, the agent is
compiled with `gcc -static`. The result is cached under `cache_dir()/images/<digest>/`, where
the digest covers every input, so a second build is a directory lookup.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vmigrate.errors import CommandFailed, ImageBuildError
from vmigrate.paths import cache_dir
from vmigrate.proc import run

#: Bump when the way an image is assembled changes, so old cached images are not reused.
BUILDER_VERSION = "1"
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_PATH = Path("/bin/busybox")
#: Modules the guest needs; their dependencies are read from each module's .modinfo.
WANTED_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net", "virtio_blk")
AGENT_CFLAGS: tuple[str, ...] = ("-static", "-O2", "-Wall", "-Wextra", "-pthread", "-s")
APT_LISTS = Path("/var/lib/apt/lists")
WORKLOADS: tuple[str, ...] = ("idle", "web", "memory")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel and initramfs to hand to QEMU's -kernel / -initrd."""

    kernel: Path
    initrd: Path
    kernel_version: str
    digest: str

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dict (paths as strings)."""
        return {
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "kernel_version": self.kernel_version,
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> GuestImage:
        """Inverse of to_json; raises ImageBuildError on a malformed record."""
        fields = {}
        for key in ("kernel", "initrd", "kernel_version", "digest"):
            value = data.get(key)
            if not isinstance(value, str) or not value:
                raise ImageBuildError(f"guest image record lacks a string {key!r}")
            fields[key] = value
        return cls(
            kernel=Path(fields["kernel"]),
            initrd=Path(fields["initrd"]),
            kernel_version=fields["kernel_version"],
            digest=fields["digest"],
        )


@dataclass(frozen=True)
class BuildInputs:
    """Everything an image is made from; its digest names the cache entry."""

    kernel_package: str
    kernel_package_version: str
    busybox_version: str
    agent_source: bytes
    init_source: bytes
    modules: tuple[str, ...] = WANTED_MODULES
    builder_version: str = BUILDER_VERSION

    def digest(self) -> str:
        """sha256 over every input, each length-prefixed so fields cannot run together."""
        h = hashlib.sha256()
        parts: list[bytes] = [
            b"vmigrate-guest-image",
            self.builder_version.encode(),
            self.kernel_package.encode(),
            self.kernel_package_version.encode(),
            self.busybox_version.encode(),
            hashlib.sha256(self.agent_source).digest(),
            hashlib.sha256(self.init_source).digest(),
            ",".join(self.modules).encode(),
            " ".join(AGENT_CFLAGS).encode(),
        ]
        for part in parts:
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()


# --------------------------------------------------------------------------- kernel cmdline


def _number(value: float) -> str:
    """A number as init.sh passes it on: integers without a fraction, floats exactly."""
    as_float = float(value)
    return str(int(as_float)) if as_float.is_integer() else repr(as_float)


def kernel_cmdline(
    ip_cidr: str,
    *,
    workload: str = "idle",
    working_set_mib: int = 64,
    dirty_rate_mib_s: float = 0,
    integrity_mib: int = 32,
    gateway: str | None = None,
    extra: Iterable[str] = (),
) -> str:
    """The -append string init.sh understands (console on ttyS0, agent options as keys)."""
    if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", ip_cidr):
        raise ValueError(f"ip_cidr must look like 10.241.0.100/24, got {ip_cidr!r}")
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    if working_set_mib < 0 or integrity_mib < 0 or dirty_rate_mib_s < 0:
        raise ValueError("working_set_mib, dirty_rate_mib_s and integrity_mib must be >= 0")
    words = [
        "console=ttyS0",
        f"vmigrate.ip={ip_cidr}",
        f"vmigrate.workload={workload}",
        f"vmigrate.working_set_mib={working_set_mib}",
        f"vmigrate.dirty_rate_mib_s={_number(dirty_rate_mib_s)}",
        f"vmigrate.integrity_mib={integrity_mib}",
    ]
    if gateway is not None:
        words.append(f"vmigrate.gw={gateway}")
    words.extend(extra)
    return " ".join(words)


def parse_cmdline(cmdline: str) -> dict[str, str]:
    """The vmigrate.* keys of a kernel command line, as init.sh reads them (last one wins)."""
    keys: dict[str, str] = {}
    for word in cmdline.split():
        if word.startswith("vmigrate.") and "=" in word:
            key, _, value = word.partition("=")
            keys[key.removeprefix("vmigrate.")] = value
    return keys


# --------------------------------------------------------------------------- cpio


class CpioWriter:
    """A minimal cpio "newc" archive writer (what the kernel unpacks as an initramfs).

    Every entry is owned by root with mtime 0, so the archive depends only on its contents.
    Parent directories are added automatically.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1
        self._dirs: set[str] = set()
        self._finished = False

    @staticmethod
    def _clean(path: str) -> str:
        clean = path.strip("/")
        if not clean or ".." in clean.split("/"):
            raise ValueError(f"bad archive path {path!r}")
        return clean

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        if self._finished:
            raise ValueError("archive already finished")
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (
            self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0
        )  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._chunks.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._chunks.append(data + b"\0" * (-len(data) % 4))

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.add_dir("/".join(parts[:i]))

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        """A directory (idempotent)."""
        clean = self._clean(path)
        if clean in self._dirs:
            return
        self._parents(clean)
        self._dirs.add(clean)
        self._entry(clean, stat.S_IFDIR | mode)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """A regular file with the given contents and permission bits."""
        clean = self._clean(path)
        self._parents(clean)
        self._entry(clean, stat.S_IFREG | mode, data)

    def add_symlink(self, path: str, target: str) -> None:
        """A symbolic link at `path` pointing to `target`."""
        clean = self._clean(path)
        self._parents(clean)
        self._entry(clean, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character device node (no mknod needed on the host)."""
        clean = self._clean(path)
        self._parents(clean)
        self._entry(clean, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive bytes, trailer included."""
        if not self._finished:
            self._entry("TRAILER!!!", 0)
            self._finished = True
        return b"".join(self._chunks)


# --------------------------------------------------------------------------- ELF / modules


def _elf_sections(blob: bytes) -> dict[str, bytes]:
    """Section name -> contents of a 64-bit little-endian ELF file (kernel modules)."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ImageBuildError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    headers = []
    for i in range(shnum):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", blob, shoff + i * shentsize
        )
        headers.append((name, offset, size))
    _n, str_off, str_size = headers[shstrndx]
    strtab = blob[str_off : str_off + str_size]
    sections: dict[str, bytes] = {}
    for name, offset, size in headers:
        end = strtab.find(b"\0", name)
        sections[strtab[name:end].decode(errors="replace")] = blob[offset : offset + size]
    return sections


def module_depends(blob: bytes) -> list[str]:
    """The `depends=` list of a kernel module's .modinfo section (what modinfo -F depends says)."""
    for item in _elf_sections(blob).get(".modinfo", b"").split(b"\0"):
        if item.startswith(b"depends="):
            value = item[len(b"depends=") :].decode()
            return [d for d in value.split(",") if d]
    return []


def is_static_elf(blob: bytes) -> bool:
    """True when an ELF executable has no PT_INTERP (no dynamic loader needed)."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", blob, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", blob, 0x36)
    types = (struct.unpack_from("<I", blob, phoff + i * phentsize)[0] for i in range(phnum))
    return all(t != 3 for t in types)  # 3 = PT_INTERP


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


# --------------------------------------------------------------------------- inputs


def _source(name: str) -> bytes:
    return resources.files("vmigrate.guest").joinpath(name).read_bytes()


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _apt_lists_fingerprint() -> str:
    """Cheap identity of the apt package lists (names, sizes, mtimes): no apt-cache run."""
    h = hashlib.sha256()
    if APT_LISTS.is_dir():
        for entry in sorted(os.scandir(APT_LISTS), key=lambda e: e.name):
            if entry.is_file() and entry.name != "lock":
                st = entry.stat()
                h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _apt_lists_present() -> bool:
    return APT_LISTS.is_dir() and any("_Packages" in p.name for p in APT_LISTS.iterdir())


def _apt_get_update(progress: Progress | None) -> None:
    _say(progress, "apt package lists are empty or stale: running apt-get update")
    try:
        run(["apt-get", "update"], timeout_s=600)
    except (CommandFailed, subprocess.TimeoutExpired) as exc:
        raise ImageBuildError(
            f"apt-get update failed ({exc}); the Debian mirror must be reachable"
        ) from exc


def _apt_show_depends(package: str) -> tuple[str, str] | None:
    """(package, version) that `package`'s candidate depends on, or None if apt lacks it."""
    done = run(["apt-cache", "show", "--no-all-versions", package], check=False)
    if done.returncode != 0:
        return None
    fields: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key and not key[0].isspace():
            fields.setdefault(key, value)
    first = fields.get("Depends", "").split(",")[0].split("|")[0].strip()
    m = re.fullmatch(r"(\S+)(?:\s*\(\s*=\s*(\S+)\s*\))?", first)
    if not m:
        return None
    dep, version = m.group(1), m.group(2)
    if version is None:
        shown = run(["apt-cache", "show", "--no-all-versions", dep], check=False)
        found = re.search(r"^Version: (\S+)$", shown.stdout, re.M)
        if shown.returncode != 0 or not found:
            return None
        version = found.group(1)
    return dep, version


def resolve_kernel_package(
    progress: Progress | None = None, allow_update: bool = True
) -> tuple[str, str]:
    """(versioned kernel package, version) behind linux-image-cloud-amd64.

    apt-cache costs ~0.5 s here, so the answer is remembered per state of the apt lists.
    """
    memo = cache_dir() / "images" / "apt-resolution.json"
    fingerprint = _apt_lists_fingerprint()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(memo.read_text())
        if saved["fingerprint"] == fingerprint and saved["metapackage"] == KERNEL_METAPACKAGE:
            return str(saved["package"]), str(saved["version"])
    updated = False
    if not _apt_lists_present():
        if not allow_update:
            raise ImageBuildError("apt package lists are empty: run apt-get update")
        _apt_get_update(progress)
        updated = True
    _say(progress, f"resolving {KERNEL_METAPACKAGE} with apt-cache")
    found = _apt_show_depends(KERNEL_METAPACKAGE)
    if found is None and allow_update and not updated:
        _apt_get_update(progress)
        found = _apt_show_depends(KERNEL_METAPACKAGE)
    if found is None:
        raise ImageBuildError(
            f"apt does not know {KERNEL_METAPACKAGE} or what it depends on: "
            "check /etc/apt/sources.list (Debian bookworm main) and run apt-get update"
        )
    memo.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "fingerprint": _apt_lists_fingerprint(),
        "metapackage": KERNEL_METAPACKAGE,
        "package": found[0],
        "version": found[1],
    }
    _write_atomic(memo, json.dumps(record).encode())
    return found


def busybox_version() -> str:
    """Installed busybox-static version; ImageBuildError with the fix when it is missing."""
    done = run(
        ["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", BUSYBOX_PACKAGE], check=False
    )
    status, _, version = done.stdout.strip().partition(" ")
    if done.returncode != 0 or status != "installed" or not BUSYBOX_PATH.exists():
        raise ImageBuildError(
            f"{BUSYBOX_PACKAGE} is not installed: apt-get install {BUSYBOX_PACKAGE}"
        )
    return version


def current_inputs(progress: Progress | None = None, allow_update: bool = True) -> BuildInputs:
    """The inputs an image built now would use (cheap once the apt answer is remembered)."""
    package, version = resolve_kernel_package(progress, allow_update=allow_update)
    return BuildInputs(
        kernel_package=package,
        kernel_package_version=version,
        busybox_version=busybox_version(),
        agent_source=_source("agent.c"),
        init_source=_source("init.sh"),
    )


# --------------------------------------------------------------------------- cache


def images_dir() -> Path:
    """Where built images live: one sub-directory per digest."""
    return cache_dir() / "images"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_entry(digest: str) -> GuestImage | None:
    entry = images_dir() / digest
    try:
        image = GuestImage.from_json(json.loads((entry / "image.json").read_text()))
    except (OSError, ValueError, ImageBuildError):
        return None
    if image.digest != digest or not image.kernel.is_file() or not image.initrd.is_file():
        return None
    return image


def load_cached_image() -> GuestImage | None:
    """The cached image for the current inputs, or None (never downloads or builds)."""
    try:
        inputs = current_inputs(allow_update=False)
    except (ImageBuildError, CommandFailed, OSError):
        return None
    return _load_entry(inputs.digest())


@contextlib.contextmanager
def _locked_tempdir(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh directory, flock'ed while in use and removed afterwards unless renamed away.

    The lock (not a PID, which may be reused) tells a later build that it was abandoned.
    """
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path.chmod(0o755)
        yield path
    finally:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


def remove_abandoned(parent: Path, pattern: str, min_age_s: float = 60) -> None:
    """Delete temp dirs of killed builds: unlocked and untouched for `min_age_s`."""
    for path in parent.glob(pattern):
        try:
            if time.time() - path.stat().st_mtime < min_age_s:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live build holds it
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- build steps


def _download_kernel(package: str, version: str, progress: Progress | None) -> Path:
    """The kernel .deb in cache_dir()/debs, downloaded (atomically) if not there yet."""
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
    existing = sorted(debs.glob(pattern))
    if existing:
        return existing[0]
    remove_abandoned(debs, ".download-*")
    _say(progress, f"downloading {package} {version}")
    with _locked_tempdir(debs, ".download-") as tmp:
        argv = ["env", "-C", str(tmp), "apt-get", "download", "-o", "APT::Sandbox::User=root"]
        try:
            run([*argv, f"{package}={version}"], timeout_s=900)
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            raise ImageBuildError(
                f"cannot download {package}={version} ({exc}); "
                "the Debian mirror must be reachable (try apt-get update)"
            ) from exc
        fetched = sorted(tmp.glob(pattern))
        if not fetched:
            raise ImageBuildError(f"apt-get download left no {pattern} in {tmp}")
        target = debs / fetched[0].name
        os.replace(fetched[0], target)
    return target


def _extract_kernel(deb: Path, dest: Path) -> tuple[Path, str, Path]:
    """Unpack the kernel .deb; return (vmlinuz, kernel version, module directory)."""
    run(["dpkg-deb", "-x", str(deb), str(dest)], timeout_s=600)
    kernels = sorted((dest / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"{deb.name} holds {len(kernels)} boot/vmlinuz-* files, expected 1")
    kernel_version = kernels[0].name.removeprefix("vmlinuz-")
    module_root = dest / "lib" / "modules" / kernel_version
    if not module_root.is_dir():
        raise ImageBuildError(f"{deb.name} has no lib/modules/{kernel_version}")
    return kernels[0], kernel_version, module_root


def compile_agent(source: bytes, workdir: Path, progress: Progress | None = None) -> bytes:
    """The agent as a static executable (gcc -static); ImageBuildError says the fix."""
    src = workdir / "agent.c"
    out = workdir / "vmigrate-agent"
    src.write_bytes(source)
    try:
        done = run(["gcc", *AGENT_CFLAGS, "-o", str(out), str(src)], timeout_s=300)
    except CommandFailed as exc:
        hint = ""
        if "cannot find -l" in exc.stderr:
            hint = " (static C library missing: apt-get install libc6-dev)"
        raise ImageBuildError(
            f"compiling the guest agent failed{hint}: {exc.stderr.strip()[-2000:]}"
        ) from exc
    if done.stderr.strip():
        _say(progress, f"gcc warnings:\n{done.stderr.strip()}")
    blob = out.read_bytes()
    if not is_static_elf(blob):
        raise ImageBuildError("gcc -static produced a dynamic executable; install libc6-dev")
    return blob


def busybox_applets() -> list[str]:
    """Paths (relative, e.g. "sbin/ip") where busybox wants its applet links."""
    done = run([str(BUSYBOX_PATH), "--list-full"])
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def build_initramfs(
    *,
    init: bytes,
    busybox: bytes,
    applets: Iterable[str],
    agent: bytes,
    kernel_version: str,
    modules: Iterable[tuple[str, bytes]],
) -> bytes:
    """The gzip'd newc cpio archive the kernel unpacks as its root filesystem."""
    w = CpioWriter()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "run", "root"):
        w.add_dir(d)
    w.add_dir("tmp", 0o1777)
    w.add_dir("dev")
    w.add_chardev("dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs exists
    w.add_chardev("dev/null", 1, 3, 0o666)
    w.add_file("init", init, 0o755)
    w.add_file("bin/busybox", busybox, 0o755)
    for applet in applets:
        if applet.strip("/") != "bin/busybox":
            w.add_symlink(applet, "/bin/busybox")
    w.add_file("bin/vmigrate-agent", agent, 0o755)
    moddir = f"lib/modules/{kernel_version}"
    w.add_dir(moddir)
    names = []
    for name, blob in modules:
        w.add_file(f"{moddir}/{name}.ko", blob)
        names.append(name)
    w.add_file(f"{moddir}/vmigrate.load", "".join(f"{n}\n" for n in names).encode())
    return gzip.compress(w.finish(), compresslevel=6, mtime=0)


def _check_tools() -> None:
    fixes = {
        "apt-get": "apt-get is required (a Debian host)",
        "apt-cache": "apt-cache is required (a Debian host)",
        "dpkg-deb": "dpkg-deb is required (a Debian host)",
        "dpkg-query": "dpkg-query is required (a Debian host)",
        "gcc": "gcc is not installed: apt-get install gcc libc6-dev",
    }
    for tool, fix in fixes.items():
        if shutil.which(tool) is None:
            raise ImageBuildError(fix)


def build_image(force: bool = False, progress: Progress | None = None) -> GuestImage:
    """Build (or reuse from the cache) the guest kernel + initramfs.

    The image directory appears atomically (temp dir + rename), so an interrupted build never
    leaves a half image; `force` rebuilds even when a cached image matches.
    """
    _check_tools()
    inputs = current_inputs(progress)
    digest = inputs.digest()
    if not force:
        cached = _load_entry(digest)
        if cached is not None:
            return cached
    root = images_dir()
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root, ".build-*")
    remove_abandoned(root, ".old-*")
    started = time.monotonic()
    with _locked_tempdir(root, f".build-{digest[:12]}-") as build:
        deb = _download_kernel(inputs.kernel_package, inputs.kernel_package_version, progress)
        work = build / "work"
        work.mkdir()
        _say(progress, f"unpacking {deb.name}")
        vmlinuz, kernel_version, module_root = _extract_kernel(deb, work / "deb")
        modules = resolve_modules(module_root, inputs.modules)
        _say(progress, f"modules in load order: {' '.join(n for n, _ in modules)}")
        _say(progress, "compiling the agent (gcc -static)")
        agent = compile_agent(inputs.agent_source, work, progress)
        busybox = BUSYBOX_PATH.read_bytes()
        if not is_static_elf(busybox):
            raise ImageBuildError(
                f"{BUSYBOX_PATH} is not static: apt-get install {BUSYBOX_PACKAGE}"
            )
        _say(progress, "writing the initramfs")
        initrd = build_initramfs(
            init=inputs.init_source,
            busybox=busybox,
            applets=busybox_applets(),
            agent=agent,
            kernel_version=kernel_version,
            modules=modules,
        )
        final = root / digest
        image = GuestImage(
            kernel=final / "vmlinuz",
            initrd=final / "initrd.img",
            kernel_version=kernel_version,
            digest=digest,
        )
        shutil.copyfile(vmlinuz, build / "vmlinuz")
        (build / "initrd.img").write_bytes(initrd)
        shutil.rmtree(work)
        manifest = {
            **image.to_json(),
            "inputs": {
                "kernel_package": inputs.kernel_package,
                "kernel_package_version": inputs.kernel_package_version,
                "busybox_version": inputs.busybox_version,
                "agent_sha256": hashlib.sha256(inputs.agent_source).hexdigest(),
                "init_sha256": hashlib.sha256(inputs.init_source).hexdigest(),
                "modules_wanted": list(inputs.modules),
                "modules_loaded": [n for n, _ in modules],
                "agent_cflags": list(AGENT_CFLAGS),
                "builder_version": inputs.builder_version,
            },
            "initrd_bytes": len(initrd),
            "build_s": round(time.monotonic() - started, 3),
        }
        (build / "image.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if force and final.exists():
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".old-{digest[:12]}-"))
            os.rename(final, old / "image")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(build, final)
        except OSError:
            other = _load_entry(digest)  # a concurrent build finished first: use it
            if other is None:
                raise
            return other
        _say(progress, f"guest image {digest[:12]} built in {time.monotonic() - started:.1f} s")
        return image


def describe(image: GuestImage) -> str:
    """One line for logs: kernel version, digest and file paths."""
    return (
        f"guest image {image.digest[:12]} (kernel {image.kernel_version}): "
        f"-kernel {shlex.quote(str(image.kernel))} -initrd {shlex.quote(str(image.initrd))}"
    )
