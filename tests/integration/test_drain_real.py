"""A drain for real (issue 12): examples/drain.toml shrunk to three guests (idle, web, memory-
dirtying) with short phases, drained off the source of testbed "vmigd" (three hypervisor hosts,
brought up by the drain and taken down by it) with the QEMU backend; and two web guests drained
through the libvirt backend. Every guest ends on its new host, memory intact; drain.json is
valid and beside the plan; each guest's result.json bills its own hosts from the drain's
series; the reports are written; nothing of the testbed is left.

Run alone (as root; a few minutes on two cores):
    sudo .venv/bin/pytest tests/integration/test_drain_real.py -q
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vmigrate.drain.bill import DrainBill, DrainOutcome
from vmigrate.drain.drain_file import Drain, validate_drain
from vmigrate.drain.inputs import check_fits
from vmigrate.drain.progress import SilentFront
from vmigrate.drain.run import run_drain
from vmigrate.testbed.testbed import Testbed

pytestmark = pytest.mark.timeout(1200)

NAME = "vmigd"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "drain.toml"
RESULT_SCHEMA = json.loads((ROOT / "docs" / "result.schema.json").read_text())
DRAIN_SCHEMA = json.loads((ROOT / "docs" / "drain.schema.json").read_text())
QUICK = {"warmup_s": 0, "baseline_s": 1, "after_s": 1}  # as test_migration.py's


@pytest.fixture
def bed() -> Iterator[Testbed]:
    """Testbed vmigd down before the test (the drain brings it up); down and gone after it."""
    bed = Testbed(NAME)
    bed.down()
    seen: list[int] = []
    try:
        yield bed
    finally:
        seen += Testbed(NAME).processes()
        problems = Testbed(NAME).down()
    assert problems == []
    assert Testbed(NAME).leftovers(seen) == []


def example(**changes: Any) -> dict[str, Any]:
    """examples/drain.toml as data, with short phases and `changes` over it."""
    data = tomllib.loads(EXAMPLE.read_text())
    data["base"]["phases"] = QUICK
    data.update(changes)
    return data


def drained(data: dict[str, Any], out: Path) -> tuple[Drain, DrainBill]:
    drain = validate_drain(data, "test")
    check_fits(drain)
    return drain, run_drain(drain, out, Testbed(NAME), SilentFront())


def assert_every_guest_moved(drain: Drain, bill: DrainBill, out: Path) -> None:
    """Each guest on its new host, the same boot, memory intact; its own bill valid, its hosts
    billed from the drain's series under the names it sees them by."""
    assert bill.outcome == DrainOutcome.COMPLETED, (bill.error, [vm.error for vm in bill.vms])
    document = json.loads((out / "drain.json").read_text())
    jsonschema.validate(document, DRAIN_SCHEMA)
    assert (out / "report.html").exists() and (out / "plan.json").exists()
    assert bill.plan is not None and bill.inputs is not None
    assert all(guest.measured for guest in bill.inputs.guests.values())
    planned = {vm.name: vm.destination for vm in bill.plan.vms}
    assert {vm.name for vm in bill.vms} == {guest.name for guest in drain.guests}
    for vm in bill.vms:
        assert vm.verified and vm.memory_intact, vm
        assert vm.source_host == drain.host and vm.destination_host in drain.receivers
        assert vm.running_on_host == vm.destination_host == planned[vm.name]
        assert vm.predicted is not None and vm.errors is not None
        run_dir = out / "vms" / vm.name
        result = json.loads((run_dir / "result.json").read_text())
        jsonschema.validate(result, RESULT_SCHEMA)
        assert (run_dir / "report.html").exists()
        assert result["outcome"] == "completed"
        assert result["environment"]["destination_host"] == vm.destination_host
        assert result["verification"]["memory_writes_intact"] is True
        assert result["prediction"]["predicted"]["total_time_s"] == vm.predicted.time_s
        hosts = result["resources"]["hosts"]
        assert hosts["destination"]["net_rx_bytes"]["during"] >= vm.transferred_bytes > 0
        assert hosts["source"]["net_tx_bytes"]["during"] >= vm.transferred_bytes
    source = bill.hosts[drain.host]
    assert source.tx_bytes is not None
    assert source.tx_bytes >= sum(vm.transferred_bytes for vm in bill.vms)
    assert source.peak_tx_mbit_s and source.peak_tx_mbit_s > 0
    assert bill.total_drain_time_s and bill.prediction is not None
    assert bill.worst.largest_downtime_vm in planned


def test_three_guests_drain_off_the_source_with_the_qemu_backend(
    bed: Testbed, tmp_path: Path
) -> None:
    groups = [
        {"name": "idle", "vm": {"memory_mib": 256}, "workload": {"kind": "idle"}},
        {"name": "web", "vm": {"memory_mib": 256}, "workload": {"kind": "web"}},
        {"name": "dirty", "vm": {"memory_mib": 320},
         "workload": {"kind": "memory", "dirty_rate_mib_s": 10, "working_set_mib": 64}},
    ]  # fmt: skip
    out = tmp_path / "drain"
    drain, bill = drained(example(groups=groups), out)
    assert_every_guest_moved(drain, bill, out)
    assert not bed.is_healthy()  # the drain brought it up, so it took it down


def test_two_guests_drain_through_the_libvirt_backend(bed: Testbed, tmp_path: Path) -> None:
    data = example(groups=[{"name": "web", "count": 2, "vm": {"memory_mib": 256}}])
    data["base"]["hosts"] = {"backend": "libvirt"}
    out = tmp_path / "drain"
    drain, bill = drained(data, out)
    assert_every_guest_moved(drain, bill, out)
    assert bill.backend == "libvirt"
    for vm in bill.vms:
        result = json.loads((out / "vms" / vm.name / "result.json").read_text())
        assert result["environment"]["backend"] == "libvirt"
    assert not bed.is_healthy()
