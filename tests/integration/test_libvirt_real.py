"""The libvirt backend for real: one libvirtd per namespaced host, the guest defined by vmigrate
on the source daemon, migrated peer-to-peer by libvirt, measured like the QEMU backend."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_migration import PREEMPT_THREAD, SCHEMA, assert_moved, run, threads_seen

from vmigrate.config import load_scenario, validate_scenario
from vmigrate.experiment import SilentObserver, run_experiment
from vmigrate.hypervisor.base import MigrationStats, MigrationStatus
from vmigrate.testbed import libvirt_domains
from vmigrate.testbed.testbed import Testbed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIBVIRT = {"hosts": {"backend": "libvirt"}}


def test_the_libvirt_example_gets_the_whole_bill(testbed: Testbed, tmp_path: Path) -> None:
    scenario = load_scenario(
        EXAMPLES / "libvirt.toml",
        ["vm.accel=tcg", "phases.warmup_s=0", "phases.baseline_s=2", "phases.after_s=2"],
    )
    result = run_experiment(scenario, tmp_path, testbed, SilentObserver()).model_dump(mode="json")
    jsonschema.validate(result, SCHEMA)
    assert_moved(result, tmp_path)
    env = result["environment"]
    assert env["backend"] == "libvirt"
    assert env["libvirt_version"].startswith("11.")
    assert all(check["ok"] for check in result["checks"]), result["checks"]
    report = result["migration"]["hypervisor_report"]
    assert report["time_elapsed_ms"] > 0
    assert report["memory_processed_bytes"] == result["migration"]["transferred_bytes"]
    assert report["downtime_ms"] == result["migration"]["downtime_reported_ms"]
    assert result["service"]["requests"]["ok"] > 0  # the load ran against the guest
    # libvirt wrote its own QEMU logs; the run keeps them
    assert "qemu-system-x86_64" in (tmp_path / "qemu-source.log").read_text()


@pytest.mark.parametrize(
    "sections",
    [
        {"migration": {"strategy": "postcopy"}, "network": {"bandwidth_mbit": 200}},
        {"migration": {"strategy": "auto-converge", "cpu_throttle_initial_pct": 50}},
        {"migration": {"strategy": "multifd", "multifd_compression": "zstd"}},
        {"migration": {"strategy": "hybrid", "postcopy_after_iterations": 2}},
        {"migration": {"strategy": "xbzrle"}},
        {"migration": {"strategy": "cold"}},
    ],
    ids=[
        "postcopy",
        "auto-converge",
        "multifd-zstd",
        "hybrid",
        "xbzrle",
        "cold",
    ],
)
def test_strategies_through_libvirt(
    testbed: Testbed, tmp_path: Path, sections: dict[str, Any]
) -> None:
    """(Local storage, libvirt's own disk copy, is test_tls.py's test_tls_through_libvirt.)"""
    workload = {"kind": "memory", "working_set_mib": 64, "dirty_rate_mib_s": 20}
    result = run(testbed, tmp_path, **LIBVIRT, workload=workload, **sections)
    testbed.shape(1000)
    assert_moved(result, tmp_path)
    assert result["environment"]["backend"] == "libvirt"
    strategy = sections.get("migration", {}).get("strategy")
    actions = [a["action"] for a in result["migration"]["actions"]]
    if strategy in ("postcopy", "hybrid"):
        assert actions.count("postcopy") == 1
        # libvirt turns postcopy-preempt on with every post-copy, unasked, and the run says so
        assert result["migration"]["postcopy_preempt"] is True
        assert any(a.startswith("libvirt turned postcopy-preempt on") for a in actions)
    if strategy == "postcopy":  # long enough (200 Mbit/s) for the meters to see its threads
        assert PREEMPT_THREAD in threads_seen(tmp_path, "destination")
    if strategy == "cold":  # paused for the whole move: the pause is the downtime
        mig = result["migration"]
        assert mig["downtime_reported_ms"] == pytest.approx(mig["total_time_s"] * 1000, rel=0.01)


class KillsTheDestinationDaemon(SilentObserver):
    """SIGKILLs the destination's libvirtd as soon as the migration is under way."""

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self.killed_pid: int | None = None

    def migration_progress(self, elapsed_s: float, stats: MigrationStats) -> None:
        if self.killed_pid is None and stats.status == MigrationStatus.ACTIVE:
            for resource in self.testbed.state.resources():
                if resource.kind == "process" and resource.name == "libvirtd-destination":
                    os.kill(resource.pid, signal.SIGKILL)
                    self.killed_pid = resource.pid


def test_killing_the_destination_daemon_leaves_the_vm_on_the_source(
    testbed: Testbed, tmp_path: Path
) -> None:
    scenario = validate_scenario(
        {
            **LIBVIRT,
            "vm": {"accel": "tcg"},
            "phases": {"warmup_s": 0, "baseline_s": 1, "after_s": 2},
            "network": {"bandwidth_mbit": 100},
            "workload": {"kind": "memory", "working_set_mib": 128, "dirty_rate_mib_s": 30},
        }
    )
    observer = KillsTheDestinationDaemon(testbed)
    try:
        result = run_experiment(scenario, tmp_path, testbed, observer).model_dump(mode="json")
    finally:
        testbed.shape(1000)
    assert observer.killed_pid is not None
    assert result["outcome"] == "failed"
    error = result["error"]
    assert error and "\n" not in error
    ver = result["verification"]
    assert ver["running_on"] == "source", error
    assert ver["service_ok_after"] is True
    assert ver["memory_checksum_ok"] is True
    assert ver["memory_writes_intact"] is True
    # The incoming QEMU the dead daemon started has no owner any more; the testbed's next
    # use removes it (it would hold the destination's tap) and the dead daemon's record.
    testbed.up(1000)
    assert libvirt_domains.orphaned_qemus(testbed.hosts["destination"].netns) == []
    assert not testbed.has_libvirt()
