"""Processes by PID, safely: a PID is only trusted while its start time still matches.

The testbed records the processes it starts (QEMU, ganesha, rpcbind, ...) and later stops them
by PID, possibly from another vmigrate process; the start time (from /proc/PID/stat) guards
against signalling an unrelated process that reused the PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if it is gone): tells PID reuse."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_same_process(pid: int, start_ticks: int | None) -> bool:
    """True while `pid` runs and is still the process that was recorded (not a reused PID).

    A zombie counts as gone: it has exited and only waits for its parent to collect it.
    """
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return False
    return start_ticks is None or int(fields[19]) == start_ticks


def terminate(pid: int, start_ticks: int | None, grace_s: float = 5.0) -> None:
    """SIGTERM a recorded process, SIGKILL it after `grace_s`; reap it if it is our child."""
    if not is_same_process(pid, start_ticks):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not is_same_process(pid, start_ticks):
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not is_same_process(pid, start_ticks):
                break
            time.sleep(0.02)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
