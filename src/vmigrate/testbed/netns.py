"""Run Python code inside a network namespace without a subprocess.

A network namespace is a per-thread attribute in Linux: a thread that calls setns(2) sees that
namespace's interfaces, and every socket it creates belongs there for life, even once used from
another thread. So `call_in_netns` runs a function in a fresh thread that first joins the
namespace; the caller's own namespace never changes.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vmigrate.errors import TestbedError
from vmigrate.proc import run

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace `name` (as created by `ip netns add`)."""
    path = Path("/run/netns", name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise TestbedError(
            f"network namespace {name!r} does not exist; run `vmigrate testbed up`"
        ) from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise TestbedError(f"setns({name}) failed: {os.strerror(err)} (vmigrate needs root)")
    finally:
        os.close(fd)


def call_in_netns(name: str, fn: Callable[..., T], *args: object) -> T:
    """Call `fn(*args)` in a thread that lives in namespace `name`; return or raise its result."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            enter_netns(name)
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns:{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def netns_exists(name: str) -> bool:
    """True when network namespace `name` exists (ip netns add made it)."""
    return Path("/run/netns", name).exists()


def netns_pids(name: str) -> list[int]:
    """PIDs of every process living in network namespace `name` (all of them ours)."""
    if not netns_exists(name):
        return []
    done = run(["ip", "netns", "pids", name], check=False)
    return [int(tok) for tok in done.stdout.split() if tok.isdigit()]
