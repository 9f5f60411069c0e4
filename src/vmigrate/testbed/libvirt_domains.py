"""The domains a testbed libvirtd holds: removing them when the daemon stops, finding those a
hung job will not let go (a source killed during post-copy leaves libvirt 11.3's migration job
holding the domain's lock for good), and the QEMUs a dead daemon left behind."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from vmigrate import libvirt_client
from vmigrate.libvirt_client import bounded
from vmigrate.testbed.libvirtd import CALL_TIMEOUT_S, open_connection
from vmigrate.testbed.netns import netns_pids

log = logging.getLogger(__name__)

_UNDEFINE_FLAGS = (
    "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
    "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
    "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA",
    "VIR_DOMAIN_UNDEFINE_NVRAM",
)


def _undefine(dom: Any, name: str, timeout_s: float) -> None:
    """Undefine with every metadata flag the driver knows (plain undefine where it refuses)."""
    libvirt = libvirt_client.load()
    flags = 0
    for flag in _UNDEFINE_FLAGS:
        flags |= int(getattr(libvirt, flag, 0))
    try:
        bounded(partial(dom.undefineFlags, flags), timeout_s, f"undefine {name}")
    except libvirt.libvirtError:  # a driver without some of these flags
        bounded(dom.undefine, timeout_s, f"undefine {name}")


@contextlib.contextmanager
def _listed(uri: str, timeout_s: float) -> Iterator[list[Any]]:
    """The domains of the daemon at `uri`, over a connection closed afterwards (bounded)."""
    conn = open_connection(uri, timeout_s)
    try:
        yield bounded(lambda: conn.listAllDomains(0), timeout_s, "list domains")
    finally:
        with contextlib.suppress(Exception):
            bounded(conn.close, 2.0, "close")


def destroy_domains(uri: str, timeout_s: float = CALL_TIMEOUT_S) -> list[str]:
    """Destroy (and undefine) every domain of the daemon at `uri`; the names of those removed.

    Each step is bounded and may fail on its own (logged); a daemon that does not answer
    raises TimeoutError or libvirt.libvirtError, and its QEMUs are left to the namespace sweep.
    """
    removed: list[str] = []
    with _listed(uri, timeout_s) as domains:
        for dom in domains:
            name = "?"
            try:
                name = bounded(dom.name, timeout_s, "domain name")
                # Asked first: a transient domain is gone once destroyed.
                persistent = bounded(dom.isPersistent, timeout_s, f"{name}: isPersistent")
                if bounded(dom.isActive, timeout_s, f"{name}: isActive"):
                    bounded(dom.destroy, timeout_s, f"destroy {name}")
                if persistent:
                    _undefine(dom, name, timeout_s)
                removed.append(name)
            except Exception as exc:
                log.warning("%s: could not remove domain %s: %s", uri, name, exc)
    return removed


def stuck_domains(uri: str, timeout_s: float = CALL_TIMEOUT_S) -> list[str]:
    """Undefine every domain of the daemon at `uri` that no longer runs (each run removes its
    own: one still there was left by a run whose removal failed); the names of those that would
    not go. Running domains are left alone (a killed run's VM, for `testbed recover`).

    A daemon that does not answer raises TimeoutError or libvirt.libvirtError."""
    stuck: list[str] = []
    with _listed(uri, timeout_s) as domains:
        for dom in domains:
            name = "?"
            try:
                name = bounded(dom.name, timeout_s, "domain name")
                if not bounded(dom.isActive, timeout_s, f"{name}: isActive"):
                    _undefine(dom, name, timeout_s)
                    log.warning("%s: undefined domain %s an earlier run left", uri, name)
            except Exception as exc:
                log.warning("%s: domain %s will not go: %s", uri, name, exc)
                stuck.append(name)
    return stuck


def orphaned_qemus(netns: str) -> list[int]:
    """QEMU processes in testbed host `netns` that a libvirtd started (they live in a mount
    namespace other than ours, the daemon's) — after the daemon died, nobody owns them."""
    own_mnt = os.stat("/proc/self/ns/mnt").st_ino
    found = []
    for pid in netns_pids(netns):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            mnt = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError:
            continue
        if comm.startswith("qemu-system") and mnt != own_mnt:
            found.append(pid)
    return found
