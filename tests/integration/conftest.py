"""Integration tests run the real thing: QEMU under TCG, namespaces, nfs-ganesha. As root.

They share one testbed per session (brought up once, torn down at the end, and checked to have
left nothing behind). Without root they fail, not skip: a green run must mean they ran.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmigrate.testbed.testbed import Testbed

TESTBED = "vmigt"
DAEMONS = {"qemu-system-x86", "ganesha.nfsd", "rpcbind"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (namespaces, taps, QEMU): run `sudo make test`")


def leftovers(prefix: str) -> list[str]:
    """Namespaces and processes a testbed named `prefix` may have left behind."""
    found = []
    root_netns = os.readlink("/proc/self/ns/net")
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [line.split()[0] for line in namespaces.splitlines() if line.startswith(prefix + "-")]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            netns = os.readlink(proc / "ns" / "net")
        except OSError:
            continue
        daemon_elsewhere = comm in DAEMONS and netns != root_netns
        if f"/{prefix}/" in cmdline or f"{prefix}-tap" in cmdline or daemon_elsewhere:
            found.append(f"pid {proc.name} ({comm}): {cmdline[:80]}")
    return found


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    bed = Testbed(TESTBED)
    bed.down()
    bed.up(1000)
    yield bed
    problems = bed.down()
    assert problems == []
    assert leftovers(TESTBED) == []
