"""The host's Debian packages an image is made from: the cloud kernel (resolved with apt-cache,
fetched with apt-get download, unpacked with dpkg-deb) and busybox-static."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

from vmigrate.errors import CommandFailed, ImageBuildError
from vmigrate.guest.cache import locked_tempdir, remove_abandoned, write_atomic
from vmigrate.guest.image import Progress, say
from vmigrate.paths import cache_dir
from vmigrate.proc import run

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_PATH = Path("/bin/busybox")
APT_LISTS = Path("/var/lib/apt/lists")


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
    say(progress, "apt package lists are empty or stale: running apt-get update")
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
    say(progress, f"resolving {KERNEL_METAPACKAGE} with apt-cache")
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
    write_atomic(memo, json.dumps(record).encode())
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


def busybox_applets() -> list[str]:
    """Paths (relative, e.g. "sbin/ip") where busybox wants its applet links."""
    done = run([str(BUSYBOX_PATH), "--list-full"])
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def download_kernel(package: str, version: str, progress: Progress | None) -> Path:
    """The kernel .deb in cache_dir()/debs, downloaded (atomically) if not there yet."""
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
    existing = sorted(debs.glob(pattern))
    if existing:
        return existing[0]
    remove_abandoned(debs, ".download-*")
    say(progress, f"downloading {package} {version}")
    with locked_tempdir(debs, ".download-") as tmp:
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


def extract_kernel(deb: Path, dest: Path) -> tuple[Path, str, Path]:
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
