"""Building the guest image: the current inputs, each build step, the finished image moved into
the cache atomically.

Safe to call from several runs at once. Once the image is built, a call only reads: the
remembered apt answer, dpkg-query, the cache entry. Within one process (a drain's lanes, each
calling from its own thread) calls take turns (_BUILDING), so the image is built once and the
others find it; across processes each builds in its own locked temporary directory and the
first rename into the cache wins, the others use its image (nothing is ever half there)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

from vmigrate.errors import CommandFailed, ImageBuildError
from vmigrate.guest.cache import images_dir, load_entry, locked_tempdir, remove_abandoned
from vmigrate.guest.debian import (
    BUSYBOX_PACKAGE,
    BUSYBOX_PATH,
    busybox_applets,
    busybox_version,
    download_kernel,
    extract_kernel,
    resolve_kernel_package,
)
from vmigrate.guest.elf import is_static_elf
from vmigrate.guest.image import AGENT_CFLAGS, BuildInputs, GuestImage, Progress, say
from vmigrate.guest.initramfs import build_initramfs
from vmigrate.guest.kernel_modules import resolve_modules
from vmigrate.proc import run

_BUILDING = threading.Lock()  # one build (or cache look-up) at a time in this process


def _source(name: str) -> bytes:
    return resources.files("vmigrate.guest").joinpath(name).read_bytes()


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


def load_cached_image() -> GuestImage | None:
    """The cached image for the current inputs, or None (never downloads or builds)."""
    try:
        inputs = current_inputs(allow_update=False)
    except (ImageBuildError, CommandFailed, OSError):
        return None
    return load_entry(inputs.digest())


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
        say(progress, f"gcc warnings:\n{done.stderr.strip()}")
    blob = out.read_bytes()
    if not is_static_elf(blob):
        raise ImageBuildError("gcc -static produced a dynamic executable; install libc6-dev")
    return blob


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
    leaves a half image; `force` rebuilds even when a cached image matches. Calls of one
    process take turns: of several at once, one builds and the others reuse its image.
    """
    with _BUILDING:
        return _build_image(force, progress)


def _build_image(force: bool, progress: Progress | None) -> GuestImage:
    _check_tools()
    inputs = current_inputs(progress)
    digest = inputs.digest()
    if not force:
        cached = load_entry(digest)
        if cached is not None:
            return cached
    root = images_dir()
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root, ".build-*")
    remove_abandoned(root, ".old-*")
    started = time.monotonic()
    with locked_tempdir(root, f".build-{digest[:12]}-") as build:
        final = root / digest
        image = _assemble(inputs, build, final, started, progress)
        if force and final.exists():
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".old-{digest[:12]}-"))
            os.rename(final, old / "image")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(build, final)
        except OSError:
            other = load_entry(digest)  # a concurrent build finished first: use it
            if other is None:
                raise
            return other
        say(progress, f"guest image {digest[:12]} built in {time.monotonic() - started:.1f} s")
        return image


def _assemble(
    inputs: BuildInputs, build: Path, final: Path, started: float, progress: Progress | None
) -> GuestImage:
    """Kernel, initramfs and image.json in `build`, for an image that will live at `final`."""
    deb = download_kernel(inputs.kernel_package, inputs.kernel_package_version, progress)
    work = build / "work"
    work.mkdir()
    say(progress, f"unpacking {deb.name}")
    vmlinuz, kernel_version, module_root = extract_kernel(deb, work / "deb")
    modules = resolve_modules(module_root, inputs.modules)
    say(progress, f"modules in load order: {' '.join(n for n, _ in modules)}")
    say(progress, "compiling the agent (gcc -static)")
    agent = compile_agent(inputs.agent_source, work, progress)
    busybox = BUSYBOX_PATH.read_bytes()
    if not is_static_elf(busybox):
        raise ImageBuildError(f"{BUSYBOX_PATH} is not static: apt-get install {BUSYBOX_PACKAGE}")
    say(progress, "writing the initramfs")
    initrd = build_initramfs(
        init=inputs.init_source,
        busybox=busybox,
        applets=busybox_applets(),
        agent=agent,
        kernel_version=kernel_version,
        modules=modules,
    )
    image = GuestImage(
        kernel=final / "vmlinuz",
        initrd=final / "initrd.img",
        kernel_version=kernel_version,
        digest=final.name,  # an entry is named by its digest
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
    return image
