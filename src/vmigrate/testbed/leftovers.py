"""What a testbed left behind after `down`: its namespaces (and the bridges, taps and veths in
them), interfaces named after it in the root namespace, processes that belonged to it (QEMU,
nfs-ganesha, rpcbind, the client's probe and load, libvirtd), its state directory.

Names carry the testbed's prefix, so the search never mistakes another testbed's pieces (or
anything else on the machine) for this one's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from vmigrate.pids import is_same_process
from vmigrate.proc import run
from vmigrate.testbed.guests import tap_pattern

log = logging.getLogger(__name__)


def leftover_namespaces(prefix: str) -> list[str]:
    """Network namespaces of testbed `prefix` that exist now."""
    listing = run(["ip", "netns", "list"], check=False).stdout
    return [
        f"netns {line.split()[0]}"
        for line in listing.splitlines()
        if line.split() and line.split()[0].startswith(prefix + "-")
    ]


def leftover_interfaces(prefix: str) -> list[str]:
    """Interfaces in the root namespace named after testbed `prefix` (there should never be
    any: the testbed adds nothing to the root namespace's network)."""
    done = run(["ip", "-j", "link", "show"], check=False)
    try:
        links = json.loads(done.stdout or "[]")
    except ValueError as exc:
        log.warning("reading the root namespace's interfaces: %s", exc)
        return []
    return [
        f"interface {link['ifname']}"
        for link in links
        if str(link.get("ifname", "")).startswith(prefix + "-")
    ]


def leftover_processes(prefix: str, state_dir: Path, watched: Iterable[int] = ()) -> list[str]:
    """Processes still running that belonged to testbed `prefix`: any of `watched` (PIDs seen
    in its namespaces before it came down), and any whose command line names its state
    directory or a guest's tap (QEMU, nfs-ganesha, rpcbind, libvirtd, the client tool). This
    process itself never counts."""
    watched_pids = set(watched)
    directory, taps = f"{state_dir}/", tap_pattern(prefix)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        pid = int(proc.name)
        if not is_same_process(pid, None):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if pid in watched_pids or directory in cmdline or taps.search(cmdline):
            found.append(f"pid {pid}: {cmdline[:80].strip()}")
    return found
