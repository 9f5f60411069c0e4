"""Faults injected for real while the VM migrates (quick variants): the VM survives every one it
can, the result says what hit when, and the bill shows what it cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_migration import run

from vmigrate.testbed.testbed import Testbed

DIRTYING = {"kind": "memory", "working_set_mib": 64, "dirty_rate_mib_s": 20}


def fault_run(testbed: Testbed, tmp_path: Path, **sections: Any) -> dict[str, Any]:
    try:
        return run(testbed, tmp_path, workload=DIRTYING, **sections)
    finally:
        testbed.shape(1000)


def assert_intact_on(result: dict[str, Any], host: str) -> None:
    ver = result["verification"]
    assert ver["running_on"] == host, result["error"]
    assert ver["service_ok_after"] is True
    assert ver["memory_checksum_ok"] is True
    assert ver["memory_writes_intact"] is True
    assert ver["disk_checksum_ok"] is True


@pytest.mark.parametrize("backend", ["qemu", "libvirt"])
def test_a_killed_destination_leaves_the_vm_on_the_source(
    testbed: Testbed, tmp_path: Path, backend: str
) -> None:
    result = fault_run(
        testbed,
        tmp_path,
        hosts={"backend": backend},
        network={"bandwidth_mbit": 200},
        fault={"kind": "kill-destination", "at": "30%"},
    )
    fault = result["fault"]
    assert fault["injected"] is True, fault
    assert "SIGKILL to the destination's QEMU" in fault["actions"][0]
    assert result["outcome"] == "failed"
    assert_intact_on(result, "source")
    actions = [a["action"] for a in result["migration"]["actions"]]
    assert any(a.startswith("fault: SIGKILL") for a in actions)


def test_a_frozen_source_completes_late_and_the_client_sees_the_freeze(
    testbed: Testbed, tmp_path: Path
) -> None:
    result = fault_run(
        testbed, tmp_path, fault={"kind": "freeze-source", "at": "0.5s", "duration_ms": 1500}
    )
    fault = result["fault"]
    assert fault["injected"] and fault["undone_at_s"] - fault["injected_at_s"] >= 1.5
    assert result["outcome"] == "completed", result["error"]
    assert_intact_on(result, "destination")
    # The guest could not answer while its QEMU was stopped: the client saw at least that.
    assert result["service"]["observed_downtime_ms"] >= 1400


def test_a_link_cut_for_two_seconds_is_ridden_out(testbed: Testbed, tmp_path: Path) -> None:
    result = fault_run(
        testbed,
        tmp_path,
        network={"bandwidth_mbit": 200},
        fault={"kind": "link-down", "at": "20%", "duration_ms": 2000},
    )
    fault = result["fault"]
    uplink = testbed.hosts["source"].uplink
    assert fault["actions"] == [
        f"fault: source uplink {uplink} down",
        f"fault undone: source uplink {uplink} up",
    ]
    assert 1.9 <= fault["undone_at_s"] - fault["injected_at_s"] <= 3.0
    assert result["outcome"] == "completed", result["error"]
    assert_intact_on(result, "destination")
    assert result["migration"]["total_time_s"] >= 2.0


def test_a_link_cut_for_good_times_out_and_the_vm_stays(testbed: Testbed, tmp_path: Path) -> None:
    result = fault_run(
        testbed,
        tmp_path,
        network={"bandwidth_mbit": 200},
        migration={"timeout_s": 6},
        fault={"kind": "link-down", "at": "20%"},
    )
    assert result["fault"]["undone_at_s"] is not None  # the link came back after the run
    assert result["outcome"] in ("timeout", "failed")
    assert_intact_on(result, "source")
