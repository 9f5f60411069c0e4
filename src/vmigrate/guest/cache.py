"""The image cache under cache_dir(): entries read back, files written atomically, and build
directories locked while in use and removed once abandoned."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vmigrate.errors import ImageBuildError
from vmigrate.guest.image import GuestImage
from vmigrate.paths import cache_dir


def images_dir() -> Path:
    """Where built images live: one sub-directory per digest."""
    return cache_dir() / "images"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename: a reader sees the old file or the new one."""
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


def load_entry(digest: str) -> GuestImage | None:
    """The cached image of `digest`, or None when its entry is missing or incomplete."""
    entry = images_dir() / digest
    try:
        image = GuestImage.from_json(json.loads((entry / "image.json").read_text()))
    except (OSError, ValueError, ImageBuildError):
        return None
    if image.digest != digest or not image.kernel.is_file() or not image.initrd.is_file():
        return None
    return image


@contextlib.contextmanager
def locked_tempdir(parent: Path, prefix: str) -> Iterator[Path]:
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
