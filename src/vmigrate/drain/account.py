"""The drain's bill made up (drain/bill.py): from what each lane recorded (its result.json),
the plan, and the drain's own host series. Reads recorded data only, so it is tested without
any VM, and the figures mean what a single run's mean (the hypervisor's total time and
downtime, the outage section's outages, the service's p99 during the migration)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vmigrate.analysis.resources import host_section, table
from vmigrate.analysis.windows import Windows, finite_or_none
from vmigrate.drain.bill import (
    DrainBill,
    DrainOutcome,
    HostBill,
    Prediction,
    VmBill,
    VmErrors,
    VmPrediction,
    WorstImpact,
)
from vmigrate.drain.drain_file import Drain, Guest
from vmigrate.drain.inputs import PlannerInputs
from vmigrate.drain.plan import Plan, VmPlan
from vmigrate.measure.recorder import load_series
from vmigrate.migration.orchestrator import Outcome
from vmigrate.result import Result

SAMPLER = (
    "one sampler of the drain (DRAIN_DIR/series/) over every hypervisor host and the storage "
    "host, whole hosts: a host's CPU and uplink carry every guest on it; each guest's "
    "result.json bills its own source, destination and storage host from the same series"
)


@dataclass
class LaneRecord:
    """What the drain knows of one guest once its lane ended."""

    guest: Guest
    booted: bool = False
    destination_host: str | None = None
    released_ns: int | None = None
    result: Result | None = None
    error: str | None = None  # the lane's own failure, when it wrote no result


@dataclass(frozen=True)
class DrainRecord:
    """The drain as it ran: its moments (monotonic ns by name), and what it planned."""

    drain: Drain
    testbed: str
    hypervisors: int
    started_at: str
    marks_ns: dict[str, int]
    inputs: PlannerInputs | None
    plan: Plan | None
    lanes: Sequence[LaneRecord]
    error: str | None = None
    interrupted: bool = False


def _pct(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or not measured:
        return None
    return finite_or_none(100.0 * (predicted - measured) / measured, 2)


def _diff(predicted: float | None, measured: float | None, digits: int) -> float | None:
    if predicted is None or measured is None:
        return None
    return round(predicted - measured, digits)


def _since(t_ns: int | None, t0_ns: int) -> float | None:
    return None if t_ns is None else round((t_ns - t0_ns) / 1e9, 3)


def _prediction(vm: VmPlan | None) -> VmPrediction | None:
    if vm is None:
        return None
    time_s = None
    if vm.start_s is not None and vm.end_s is not None:
        time_s = round(vm.end_s - vm.start_s, 3)
    return VmPrediction(
        destination_host=vm.destination, outcome=vm.outcome, start_s=vm.start_s,
        end_s=vm.end_s, time_s=time_s, downtime_ms=vm.downtime_ms,
        transferred_bytes=vm.transferred_bytes,
    )  # fmt: skip


def _moment_ns(result: Result, name: str) -> int | None:
    at = result.timeline_s.get(name)
    return None if at is None else result.clock.t0_ns + round(at * 1e9)


def vm_bill(lane: LaneRecord, planned: VmPlan | None, t0_ns: int) -> VmBill:
    """One guest's line of the bill, from its result (if it wrote one) and the plan."""
    guest, result = lane.guest, lane.result
    bill = VmBill(
        name=guest.name, group=guest.group, guest=guest.index, source_host="",
        destination_host=lane.destination_host, running_on_host=None, booted=lane.booted,
        outcome=None, verified=False, memory_intact=None,
        released_s=_since(lane.released_ns, t0_ns), start_s=None, end_s=None,
        migration_time_s=None, downtime_ms=None, network_outage_ms=None,
        service_outage_ms=None, latency_p99_during_ms=None, transferred_bytes=0,
        error=lane.error, result=None, predicted=_prediction(planned), errors=None,
    )  # fmt: skip
    if result is None:
        return bill
    return _from_result(bill, result, t0_ns)


def _from_result(bill: VmBill, result: Result, t0_ns: int) -> VmBill:
    """The guest's figures from its result.json."""
    env = result.environment.model_dump()
    source, destination = env.get("source_host", "source"), env.get("destination_host")
    ver, mig, outcome = result.verification, result.migration, result.outcome
    on = {"source": source, "destination": destination}.get(ver.running_on)
    intact = None
    if ver.memory_checksum_ok is not None:
        intact = ver.memory_checksum_ok and ver.memory_writes_intact is not False
    started = result.timeline_s.get("migration_start") is not None
    during = result.service.latency_ms.get("during")
    bill.source_host, bill.destination_host, bill.running_on_host = source, destination, on
    bill.outcome = outcome if started else None
    bill.memory_intact = intact
    bill.verified = bool(
        outcome == Outcome.COMPLETED and ver.running_on == "destination" and ver.service_ok_after
        and intact and ver.disk_checksum_ok is not False
    )  # fmt: skip
    bill.start_s = _since(_moment_ns(result, "migration_start"), t0_ns)
    bill.end_s = _since(_moment_ns(result, "migration_end"), t0_ns)
    bill.migration_time_s, bill.downtime_ms = mig.total_time_s, mig.downtime_reported_ms
    if result.outage is not None:
        bill.network_outage_ms = result.outage.network_outage_ms
        bill.service_outage_ms = result.outage.service_outage_ms
    bill.latency_p99_during_ms = during.p99 if during is not None else None
    bill.transferred_bytes = mig.transferred_bytes
    bill.error = result.error or bill.error
    bill.result = f"vms/{bill.name}/result.json"
    if bill.predicted is not None and outcome == Outcome.COMPLETED:
        p = bill.predicted
        bill.errors = VmErrors(
            time_pct=_pct(p.time_s, mig.total_time_s),
            transferred_pct=_pct(p.transferred_bytes, mig.transferred_bytes),
            downtime_ms=_diff(p.downtime_ms, mig.downtime_reported_ms, 1),
            start_s=_diff(p.start_s, bill.start_s, 3),
        )
    return bill


def host_bills(
    drain_dir: Path, hosts: Sequence[str], window_ns: tuple[int, int], interval_ms: float
) -> dict[str, HostBill]:
    """Each host's uplink and CPU over `window_ns`, from the drain's series."""
    processes = table(*load_series(drain_dir, "processes"))
    links = table(*load_series(drain_dir, "links"))
    start, end = window_ns
    windows = Windows(start, (start, start), window_ns, (end, end))
    bills: dict[str, HostBill] = {}
    for host in hosts:
        mine_p = _rows_of(processes, host)
        mine_l = _rows_of(links, host)
        figures = host_section(mine_p, {}, mine_l, windows, interval_ms)
        tx, rx = figures.net_tx_bytes.during, figures.net_rx_bytes.during
        bills[host] = HostBill(
            tx_bytes=None if tx is None else int(tx),
            rx_bytes=None if rx is None else int(rx),
            peak_tx_mbit_s=peak_rate_mbit_s(mine_l, "tx_bytes", window_ns),
            peak_rx_mbit_s=peak_rate_mbit_s(mine_l, "rx_bytes", window_ns),
            cpu_seconds=figures.cpu_seconds.during,
            peak_cpu_pct=figures.cpu_pct_peak,
        )
    return bills


def _rows_of(rows: dict[str, Any], host: str) -> dict[str, Any]:
    """The rows of one host (all columns), or none."""
    if "host" not in rows or len(rows["host"]) == 0:
        return {}
    mask = rows["host"] == host
    return {name: column[mask] for name, column in rows.items()}


def peak_rate_mbit_s(
    links: dict[str, Any], column: str, window_ns: tuple[int, int]
) -> float | None:
    """The highest rate between two samples of a link counter within the window, Mbit/s."""
    t, v = links.get("t_ns"), links.get(column)
    if not isinstance(t, np.ndarray) or not isinstance(v, np.ndarray) or len(t) < 2:
        return None
    order = np.argsort(t, kind="stable")
    t, v = t[order].astype(float), v[order].astype(float)
    inside = (t[1:] > window_ns[0]) & (t[:-1] < window_ns[1]) & (np.diff(t) > 0)
    if not np.any(inside):
        return None
    rates = np.diff(v)[inside] * 8 / (np.diff(t)[inside] / 1e9) / 1e6
    return finite_or_none(float(np.max(rates)), 3)


def worst_impact(vms: Sequence[VmBill]) -> WorstImpact:
    """The largest outage and pause, and the worst p99 during a migration, with whose."""

    def most(key: str) -> tuple[float | None, str | None]:
        found = [(value, vm.name) for vm in vms if (value := getattr(vm, key)) is not None]
        if not found:
            return None, None
        value, name = max(found)
        return value, name

    outage, outage_vm = most("service_outage_ms")
    downtime, downtime_vm = most("downtime_ms")
    p99, p99_vm = most("latency_p99_during_ms")
    return WorstImpact(
        largest_outage_ms=outage, largest_outage_vm=outage_vm,
        largest_downtime_ms=downtime, largest_downtime_vm=downtime_vm,
        worst_p99_ms=p99, worst_p99_vm=p99_vm,
    )  # fmt: skip


def _outcome(record: DrainRecord, vms: Sequence[VmBill]) -> DrainOutcome:
    if record.interrupted:
        return DrainOutcome.INTERRUPTED
    if "first_release" not in record.marks_ns:
        return DrainOutcome.FAILED
    if vms and all(vm.verified for vm in vms):
        return DrainOutcome.COMPLETED
    return DrainOutcome.INCOMPLETE


def _ordered(record: DrainRecord) -> list[tuple[LaneRecord, VmPlan | None]]:
    """The lanes in the order the plan starts them (the unplanned after them)."""
    planned = {vm.name: vm for vm in record.plan.vms} if record.plan else {}
    rank = {name: i for i, name in enumerate(planned)}
    lanes = sorted(record.lanes, key=lambda lane: rank.get(lane.guest.name, len(rank)))
    return [(lane, planned.get(lane.guest.name)) for lane in lanes]


def make_bill(record: DrainRecord, drain_dir: Path, backend: str) -> DrainBill:
    """The drain's bill from its record, its lanes' results and DRAIN_DIR/series."""
    marks = record.marks_ns
    t0 = marks.get("first_release", marks.get("start", 0))
    vms = [vm_bill(lane, planned, t0) for lane, planned in _ordered(record)]
    ends = [lane.result.clock.t0_ns + round(at * 1e9) for lane in record.lanes
            if lane.result is not None and lane.released_ns is not None
            and (at := lane.result.timeline_s.get("migration_end")) is not None]  # fmt: skip
    drain_end = max(ends) if ends else None
    total_s = None if drain_end is None or "first_release" not in marks else _since(drain_end, t0)
    timeline = {name: s for name, t in marks.items() if (s := _since(t, t0)) is not None}
    if drain_end is not None:
        timeline["drain_end"] = round((drain_end - t0) / 1e9, 3)
    drain = record.drain
    host_names = [drain.host, *drain.receivers, "storage"]
    window = (t0, drain_end if drain_end is not None else t0)
    interval_ms = drain.base.measure.resource_interval_ms
    return DrainBill(
        name=drain.name, started_at=record.started_at, t0_ns=t0, testbed=record.testbed,
        hypervisors=record.hypervisors, backend=backend, drained_host=drain.host,
        receivers=list(drain.receivers), outcome=_outcome(record, vms), error=record.error,
        timeline_s=timeline, total_drain_time_s=total_s, inputs=record.inputs,
        plan=record.plan, prediction=_drain_prediction(record.plan, total_s, vms), vms=vms,
        hosts=host_bills(drain_dir, host_names, window, interval_ms), sampler=SAMPLER,
        worst=worst_impact(vms),
        files={"log": "vmigrate.log", "series": "series/", "report": "report.html",
               "plan": "plan.json", "vms": "vms/NAME/ (each guest's own run directory)"},
    )  # fmt: skip


def _drain_prediction(
    plan: Plan | None, measured_s: float | None, vms: Sequence[VmBill]
) -> Prediction | None:
    if plan is None:
        return None
    errors = [vm.errors.time_pct for vm in vms if vm.errors and vm.errors.time_pct is not None]
    return Prediction(
        predicted_drain_time_s=round(plan.total_time_s, 3),
        measured_drain_time_s=measured_s,
        drain_time_error_pct=_pct(plan.total_time_s, measured_s),
        median_vm_time_error_pct=round(statistics.median(errors), 2) if errors else None,
        median_abs_vm_time_error_pct=(
            round(statistics.median(abs(e) for e in errors), 2) if errors else None
        ),
        calibrated_runs=plan.calibrated_runs,
    )
