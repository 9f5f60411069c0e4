"""The guest: a Debian cloud kernel, a busybox initramfs and our static agent (agent.c).

`image.build_image()` builds and caches it; `agent_client` talks to the running agent.
"""

from vmigrate.guest.agent_client import (
    CONTROL_PORT,
    ECHO_PORT,
    HTTP_PORT,
    READY_MARKER,
    checksum,
    control,
    http_get,
    status,
)
from vmigrate.guest.image import GuestImage, build_image, kernel_cmdline, load_cached_image

__all__ = [
    "CONTROL_PORT",
    "ECHO_PORT",
    "HTTP_PORT",
    "READY_MARKER",
    "GuestImage",
    "build_image",
    "checksum",
    "control",
    "http_get",
    "kernel_cmdline",
    "load_cached_image",
    "status",
]
