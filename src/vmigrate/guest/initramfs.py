"""The initramfs: a newc cpio archive written in Python, and what goes in it."""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable


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
