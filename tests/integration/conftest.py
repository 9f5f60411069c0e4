"""Integration tests run the real thing: QEMU under TCG, namespaces, nfs-ganesha. As root.

They share one testbed per session (brought up once, torn down at the end, and checked to have
left nothing behind). Without root they fail, not skip: a green run must mean they ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmigrate.testbed.testbed import Testbed

# VMIGRATE_TEST_TESTBED: another name, for two test runs side by side on one machine.
TESTBED = os.environ.get("VMIGRATE_TEST_TESTBED", "vmigt")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (namespaces, taps, QEMU): run `sudo make test`")


def processes_in(prefix: str) -> list[int]:
    """PIDs of every process inside the namespaces of testbed `prefix` right now."""
    return Testbed(prefix).processes()


def leftovers(prefix: str, pids: list[int] | None = None) -> list[str]:
    """What of testbed `prefix` is still there: namespaces, interfaces, which of `pids` (or of
    the processes naming the testbed's directory or tap) still run, its state directory."""
    return Testbed(prefix).leftovers(pids or [])


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    bed = Testbed(TESTBED)
    bed.down()
    bed.up(1000)
    yield bed
    pids = processes_in(TESTBED)
    assert pids, "the NFS server should be running in the storage namespace"
    problems = bed.down()
    assert problems == []
    assert leftovers(TESTBED, pids) == []
