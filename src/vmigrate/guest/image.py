"""A guest image: the kernel and initramfs QEMU boots, and the inputs whose digest names its
cache entry (cache_dir()/images/<digest>/)."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import ImageBuildError

#: Bump when the way an image is assembled changes, so old cached images are not reused.
BUILDER_VERSION = "1"
#: Modules the guest needs; their dependencies are read from each module's .modinfo.
WANTED_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net", "virtio_blk")
AGENT_CFLAGS: tuple[str, ...] = ("-static", "-O2", "-Wall", "-Wextra", "-pthread", "-s")

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


def say(progress: Progress | None, message: str) -> None:
    """Report a build step to `progress`, if there is one."""
    if progress is not None:
        progress(message)


def describe(image: GuestImage) -> str:
    """One line for logs: kernel version, digest and file paths."""
    return (
        f"guest image {image.digest[:12]} (kernel {image.kernel_version}): "
        f"-kernel {shlex.quote(str(image.kernel))} -initrd {shlex.quote(str(image.initrd))}"
    )
