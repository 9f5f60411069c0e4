"""QEMU's own switch-over checkpoints, read from its log.

QEMU (8.2+) marks each step of a migration's downtime with the trace point
`vmstate_downtime_checkpoint`: on the source `src-vm-stopped`, `src-iterable-saved` (the last
RAM pass written to the stream), `src-non-iterable-saved` (the device state written), on the
destination `dst-precopy-loadvm-completed`, `dst-precopy-bh-vm-started`, and their post-copy
counterparts. With `-msg timestamp=on` its log backend prefixes each line with the process and
the wall-clock time (`PID@SECONDS.MICROSECONDS:`), so the steps land on our clock like QMP
events. A QEMU without the trace point only warns; then there are no checkpoints."""

from __future__ import annotations

import logging
import re
from pathlib import Path

TRACE_POINT = "vmstate_downtime_checkpoint"
ARGS = ["-msg", "timestamp=on", "-trace", f"enable={TRACE_POINT}"]
_LINE = re.compile(rb"^\d+@(\d+)\.(\d{6}):" + TRACE_POINT.encode() + rb" (\S+)\s*$")

log = logging.getLogger(__name__)


def is_checkpoint(line: str) -> bool:
    """Whether a line of QEMU's log is one of its checkpoints (not a message for a person)."""
    return _LINE.match(line.encode()) is not None


def read_checkpoints(path: Path, offset: int) -> list[tuple[int, str]]:
    """The checkpoints one QEMU wrote to its host's log `path`: from `offset` (the log's size
    before its command line was written there) up to the next QEMU's command line ("$ ..."), as
    (wall-clock ns, name) in the order written. (The number before "@" is the writing thread's,
    not the process's.) Unreadable log: none (logged)."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            lines = file.read().splitlines()
    except OSError as exc:
        log.warning("cannot read QEMU's checkpoints from %s: %s", path, exc)
        return []
    found = []
    for index, line in enumerate(lines):
        if index > 0 and line.startswith(b"$ "):
            break
        match = _LINE.match(line)
        if match is not None:
            wall_ns = int(match.group(1)) * 1_000_000_000 + int(match.group(2)) * 1_000
            found.append((wall_ns, match.group(3).decode()))
    return found
