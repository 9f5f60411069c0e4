"""Running external commands, optionally inside a network namespace, with errors that say why."""

from __future__ import annotations

import enum
import os
import selectors
import subprocess
import time
from collections.abc import Callable, Sequence

from vmigrate.errors import CommandFailed


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside network namespace `netns` (unchanged when None)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout_s: float = 120.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing text output; raise CommandFailed on non-zero exit."""
    full = in_netns(netns, argv)
    done = subprocess.run(
        full,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        input=input_text,
        check=False,
    )
    if check and done.returncode != 0:
        raise CommandFailed(full, done.returncode, done.stderr or done.stdout)
    return done


class ReadEnd(enum.Enum):
    """Why `read_until` stopped reading."""

    ENOUGH = "enough"
    CLOSED = "closed"
    TIMED_OUT = "timed out"


def read_until(fd: int, enough: Callable[[bytes], bool], timeout_s: float) -> tuple[bytes, ReadEnd]:
    """Read a child's pipe `fd` until `enough(what was read)` holds, the child closes it, or
    `timeout_s` passes; what was read, and which of the three ended it."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not enough(seen):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return seen, ReadEnd.TIMED_OUT
            chunk = os.read(fd, 65536)
            if not chunk:
                return seen, ReadEnd.CLOSED
            seen += chunk
    return seen, ReadEnd.ENOUGH
