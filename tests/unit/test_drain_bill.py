"""The drain's bill from fake lane results: per guest its hosts, times since the first
release, figures and the plan's beside them; the drain's time against the plan's; the hosts'
links and CPU from the drain's own series; the worst impact; how the drain ended. And each
lane's share of the drain's series: its hosts' rows, renamed to the roles it sees."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jsonschema
import pytest
from drain_fakes import RELEASE, S, fake_drain, lane_record, lane_result, write_host_series

from vmigrate.analysis.prediction import prediction_section
from vmigrate.drain.account import DrainRecord, LaneRecord, make_bill
from vmigrate.drain.bill import DrainOutcome
from vmigrate.drain.inputs import declared_inputs, plan_drain, planned_estimate
from vmigrate.drain.schema import SCHEMA_PATH, drain_schema, render
from vmigrate.drain.series import cut_for_lane, cut_rows
from vmigrate.migration.orchestrator import Outcome
from vmigrate.migration.preflight import Preflight

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "drain.schema.json"


def record(lanes: list[LaneRecord], **kw: object) -> DrainRecord:
    drain = fake_drain()
    inputs = declared_inputs(drain)
    marks = {"start": RELEASE - 60 * S, "booted": RELEASE - 20 * S, "first_release": RELEASE}
    return DrainRecord(
        drain=drain, testbed="vmd", hypervisors=3, started_at="now", marks_ns=marks,
        inputs=inputs, plan=plan_drain(drain, inputs), lanes=lanes, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def three_lanes() -> list[LaneRecord]:
    drain = fake_drain()
    return [
        lane_record(drain, "d-web-1", "hv3", (0.2, 3.0), total_s=2.5, downtime_ms=15),
        lane_record(drain, "d-web-2", "destination", (0.2, 4.0), total_s=3.5, downtime_ms=40),
        lane_record(drain, "d-mem-1", "hv3", (3.1, 9.5), total_s=6.0, downtime_ms=290),
    ]


def test_a_drain_of_three_guests_that_all_moved(tmp_path: Path) -> None:
    write_host_series(tmp_path)
    rec = record(three_lanes())
    bill = make_bill(rec, tmp_path, "qemu")
    assert bill.outcome == DrainOutcome.COMPLETED and bill.error is None
    assert bill.total_drain_time_s == 9.5
    assert bill.timeline_s["start"] == -60 and bill.timeline_s["drain_end"] == 9.5
    assert rec.plan is not None
    assert [vm.name for vm in bill.vms] == [vm.name for vm in rec.plan.vms]  # the plan's order
    web = next(vm for vm in bill.vms if vm.name == "d-web-1")
    assert (web.source_host, web.destination_host, web.running_on_host) == (
        "source", "hv3", "hv3",
    )  # fmt: skip
    assert web.verified and web.memory_intact and web.outcome == Outcome.COMPLETED
    assert (web.start_s, web.end_s, web.released_s) == (0.2, 3.0, -0.3)
    assert web.migration_time_s == 2.5 and web.transferred_bytes == 300_000_000
    assert web.result == "vms/d-web-1/result.json"
    assert web.predicted is not None and web.errors is not None
    assert web.predicted.time_s is not None
    assert web.errors.time_pct == pytest.approx((web.predicted.time_s - 2.5) / 2.5 * 100, 0.01)
    prediction = bill.prediction
    assert prediction is not None and prediction.measured_drain_time_s == 9.5
    assert prediction.drain_time_error_pct == pytest.approx(
        (rec.plan.total_time_s - 9.5) / 9.5 * 100, abs=0.01
    )
    times = sorted(vm.errors.time_pct for vm in bill.vms if vm.errors and vm.errors.time_pct)
    assert prediction.median_vm_time_error_pct == pytest.approx(times[1], abs=0.01)
    sizes = sorted(abs(t) for t in times)
    assert prediction.median_abs_vm_time_error_pct == pytest.approx(sizes[1], abs=0.01)
    assert (bill.worst.largest_downtime_ms, bill.worst.largest_downtime_vm) == (290, "d-mem-1")
    jsonschema.validate(bill.model_dump(mode="json"), drain_schema())


def test_the_hosts_links_and_cpu_over_the_drain(tmp_path: Path) -> None:
    write_host_series(tmp_path)
    bill = make_bill(record(three_lanes()), tmp_path, "qemu")
    assert set(bill.hosts) == {"source", "destination", "hv3", "storage"}
    source, hv3 = bill.hosts["source"], bill.hosts["hv3"]
    # 0 … 9.5 s after the first release (samples at whole seconds, rounded outward): 10 s,
    # two of them at 20 MB/s
    assert source.tx_bytes == 120_000_000 and hv3.rx_bytes == 120_000_000
    assert source.peak_tx_mbit_s == pytest.approx(160.0)
    assert hv3.peak_rx_mbit_s == pytest.approx(160.0) and source.peak_rx_mbit_s == 0
    assert source.cpu_seconds == pytest.approx(5.0) and source.peak_cpu_pct == pytest.approx(50)
    assert bill.hosts["destination"].tx_bytes is None  # nothing sampled there
    assert "one sampler of the drain" in bill.sampler


def test_a_guest_that_did_not_boot_or_move_leaves_the_drain_incomplete(tmp_path: Path) -> None:
    drain = fake_drain()
    lanes = [
        lane_record(drain, "d-web-1", "hv3", (0.2, 3.0)),
        lane_record(drain, "d-web-2", "hv3", (0.2, 30.0), outcome=Outcome.FAILED),
        LaneRecord(drain.guest("d-mem-1"), error="the guest did not boot"),
    ]
    bill = make_bill(record(lanes), tmp_path, "qemu")
    assert bill.outcome == DrainOutcome.INCOMPLETE
    by = {vm.name: vm for vm in bill.vms}
    failed, lost = by["d-web-2"], by["d-mem-1"]
    assert failed.outcome == Outcome.FAILED and not failed.verified
    assert failed.running_on_host == "source" and failed.errors is None
    assert failed.error == "it stalled"
    assert not lost.booted and lost.outcome is None and lost.result is None
    assert lost.error == "the guest did not boot" and lost.predicted is not None
    assert bill.total_drain_time_s == 30.0
    jsonschema.validate(bill.model_dump(mode="json"), drain_schema())


def test_a_drain_that_stopped_before_releasing_or_was_interrupted(tmp_path: Path) -> None:
    rec = record([], error="no guest booted")
    rec.marks_ns.pop("first_release")
    bill = make_bill(rec, tmp_path, "qemu")
    assert bill.outcome == DrainOutcome.FAILED and bill.total_drain_time_s is None
    assert bill.error == "no guest booted"
    bill = make_bill(record(three_lanes(), interrupted=True), tmp_path, "qemu")
    assert bill.outcome == DrainOutcome.INTERRUPTED


def test_the_committed_drain_schema_is_the_generated_one() -> None:
    assert SCHEMA_PATH == COMMITTED
    assert COMMITTED.read_text() == render(), (
        "docs/drain.schema.json differs from the DrainBill model: regenerate it with "
        "`make schema` (python -m vmigrate.drain.schema) and commit it"
    )
    schema = drain_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert json.loads(COMMITTED.read_text())["title"] == "vmigrate drain.json"


# -- each lane's share of the drain's series ---------------------------------------------------


def test_a_lane_gets_its_hosts_rows_renamed_with_a_sample_either_side() -> None:
    header = ["t_ns", "host", "pid", "cpu_s"]
    hosts = (("source", 1), ("hv3", 2), ("destination", 3), ("storage", 4))
    rows = [[str(t), host, str(pid), str(t / 10)] for t in range(0, 100, 10) for host, pid in hosts]
    roles = {"source": "source", "hv3": "destination", "storage": "storage"}
    cut = cut_rows(rows, header, ("host", "pid"), roles, (35, 55))
    assert {row[1] for row in cut} == {"source", "destination", "storage"}
    assert not [row for row in cut if row[2] == "3"]  # the other receiver is not its host
    assert sorted({int(row[0]) for row in cut}) == [30, 40, 50, 60]
    assert [row[2] for row in cut if row[1] == "destination"] == ["2"] * 4
    assert [int(row[0]) for row in cut] == sorted(int(row[0]) for row in cut)


def test_cutting_writes_the_lanes_series_files(tmp_path: Path) -> None:
    write_host_series(tmp_path / "drain")
    lane = tmp_path / "lane"
    written = cut_for_lane(
        tmp_path / "drain",
        lane,
        {"source": "source", "hv3": "destination"},
        (RELEASE, RELEASE + 3 * S),
    )
    with open(lane / "series" / "links.csv", newline="") as handle:
        links = list(csv.reader(handle))
    assert links[0][:2] == ["t_ns", "host"] and {row[1] for row in links[1:]} == {
        "source", "destination",
    }  # fmt: skip
    assert written == len(links) - 1 + 6  # processes: the source's QEMU, 4 samples + 1 each side
    assert not (lane / "series" / "threads.csv").exists()  # the drain sampled no threads


def test_each_guest_gets_the_plans_figures_as_its_own_estimate() -> None:
    drain = fake_drain()
    inputs = declared_inputs(drain)
    planned = plan_drain(drain, inputs)
    vm = next(v for v in planned.vms if v.name == "d-mem-1")
    assert vm.start_s is not None and vm.end_s is not None
    check = planned_estimate(drain.guest("d-mem-1"), vm, inputs, planned.calibrated_runs)
    assert (check.name, check.status) == ("estimate", "pass")
    assert f"to {vm.destination}" in check.message
    figures = check.figures
    time_s = round(vm.end_s - vm.start_s, 3)
    assert figures["predicted_total_time_s"] == time_s
    assert figures["predicted_transferred_bytes"] == round(vm.transferred_bytes)
    assert figures["bandwidth_mib_s"] == pytest.approx(vm.transferred_bytes / 2**20 / time_s, 1e-3)
    assert figures["dirty_rate_mib_s"] == 10 and figures["memory_bytes"] == 384 * 2**20
    # the guest's own result sets the plan beside what happened, as a run alone its estimate
    result = lane_result(drain, "d-mem-1", vm.destination, (0.0, 10.0), total_s=10.0)
    preflight = Preflight("qemu64", "qemu64", "pc-q35-10.0", skipped=True, checks=[check])
    section = prediction_section(result.model_copy(update={"preflight": preflight.section()}))
    assert section is not None and section.predicted.total_time_s == time_s
    assert section.error.total_time_pct == pytest.approx((time_s - 10.0) / 10.0 * 100, abs=0.01)
