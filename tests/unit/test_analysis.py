"""The analysis on synthetic series with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_result import completed_record, result_of

from vmigrate.analysis import analyze
from vmigrate.analysis.checks import consistency_checks
from vmigrate.analysis.migration import data_section, phases_section
from vmigrate.analysis.resources import cpu_split, host_section, table
from vmigrate.analysis.service import observed_downtime, service_section
from vmigrate.analysis.windows import Windows, counter_delta
from vmigrate.result import Result
from vmigrate.result.base import WindowFigures
from vmigrate.result.document import Event
from vmigrate.result.migration import PostcopyPause
from vmigrate.stats import nearest_rank

S = 1_000_000_000  # ns per second
T0 = 1_000 * S
# baseline 0-10 s, migration 10-20 s, after 20-30 s (seconds since T0)
WINDOWS = Windows.from_marks(
    T0, {"baseline_start": 0.0, "migration_start": 10.0, "migration_end": 20.0, "after_end": 30.0}
)


def probes(interval_ms: float, hole: tuple[float, float] | None) -> dict[str, np.ndarray]:
    send = T0 + np.arange(0, 30 * S, interval_ms * 1e6)
    recv = send + 200_000.0  # 0.2 ms round trip
    if hole is not None:
        lost = (send >= T0 + hole[0] * S) & (send < T0 + hole[1] * S)
        recv[lost] = np.nan
    return {"send_ns": send, "recv_ns": recv}


def test_a_500_ms_hole_in_the_replies_is_measured_to_one_interval() -> None:
    p = probes(1.0, (14.0, 14.5))
    gap_ms, start_ns, sent, lost = observed_downtime(p["send_ns"], p["recv_ns"], WINDOWS.during)
    assert gap_ms == pytest.approx(500.0, abs=1.0)
    assert start_ns == pytest.approx(T0 + 14 * S, abs=2e6)
    assert lost == 500
    assert sent == pytest.approx(10_000, abs=2)


def test_no_hole_gives_one_interval() -> None:
    p = probes(1.0, None)
    gap_ms, _, _, lost = observed_downtime(p["send_ns"], p["recv_ns"], WINDOWS.during)
    assert gap_ms == pytest.approx(1.0, abs=0.01)
    assert lost == 0


def test_a_hole_outside_the_migration_window_is_not_downtime() -> None:
    p = probes(1.0, (5.0, 5.5))
    gap_ms, _, _, _ = observed_downtime(p["send_ns"], p["recv_ns"], WINDOWS.during)
    assert gap_ms == pytest.approx(1.0, abs=0.01)


def test_a_guest_that_never_answers_again_is_down_until_the_last_probe() -> None:
    p = probes(1.0, (15.0, 31.0))
    gap_ms, _, _, _ = observed_downtime(p["send_ns"], p["recv_ns"], WINDOWS.during)
    assert gap_ms == pytest.approx(15_000, abs=2)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0.01, max_value=1e5), min_size=1, max_size=500),
    pct=st.sampled_from([50.0, 90.0, 99.0, 99.9]),
)
def test_percentiles_match_a_reference_nearest_rank(values: list[float], pct: float) -> None:
    ordered = sorted(values)
    rank = max(1, -(-int(pct * 1000) * len(ordered) // 100_000))  # ceil(pct/100 * n)
    assert nearest_rank(np.array(values), pct) == ordered[rank - 1]


def test_latency_windows_errors_and_sla() -> None:
    intended = T0 + np.arange(0, 30 * S, 10_000_000, dtype=float)  # 100 req/s
    latency_ns = np.full(len(intended), 2e6)  # 2 ms
    spike = (intended >= T0 + 15 * S) & (intended < T0 + 15.5 * S)
    latency_ns[spike] = 300e6  # 300 ms during the migration
    done = intended + latency_ns
    status = np.full(len(intended), 200.0)
    errors = [""] * len(intended)
    errors[2000] = "timeout"  # at 20.0 s: the start of after
    status[2000] = 0
    done[2000] = np.nan
    service = service_section(
        probes(1.0, None),
        {"intended_ns": intended, "done_ns": done, "status": status},
        errors,
        WINDOWS,
        1.0,
        100.0,
    )
    baseline, during = service.latency_ms["baseline"], service.latency_ms["during"]
    assert baseline is not None and during is not None
    assert baseline.p50 == pytest.approx(2.0)
    assert baseline.max == pytest.approx(2.0)
    assert during.max == pytest.approx(300.0)
    assert during.p99 == pytest.approx(300.0)  # 50 of 1000 requests are slow
    assert during.p90 == pytest.approx(2.0)
    assert service.requests.model_dump() == {
        "sent": 3000,
        "ok": 2999,
        "errors": 0,
        "timeouts": 1,
        "failed_during": 1,
    }
    assert service.sla_violations.over_sla == 51  # 50 slow + 1 timed out at 20.0 s
    assert service.sla_violations.baseline_p99_ms == pytest.approx(2.0)
    assert service.throughput_rps["baseline"] == pytest.approx(100.0, rel=0.01)
    assert service.histograms["during"]


def cpu_rows(
    pid: int, host: str, rate_before: float, rate_during: float
) -> dict[str, list[object]]:
    """A process sampled every 200 ms whose CPU rate steps up during the migration window."""
    rows: dict[str, list[object]] = {
        k: []
        for k in ("t_ns", "host", "pid", "name", "cpu_s", "rss_bytes", "read_bytes", "write_bytes")
    }
    cpu = 0.0
    for t in np.arange(0, 30 * S + 1, 200_000_000):
        rows["t_ns"].append(float(T0 + t))
        rows["host"].append(host)
        rows["pid"].append(float(pid))
        rows["name"].append("qemu-system-x86")
        rows["cpu_s"].append(cpu)
        rows["rss_bytes"].append(100e6 if t < 10 * S else 150e6)
        rows["read_bytes"].append(0.0)
        rows["write_bytes"].append(float(t // S) * 1e6)  # 1 MB/s throughout
        in_during = 10 * S <= t < 20 * S
        cpu += 0.2 * (rate_during if in_during else rate_before)
    return rows


def as_table(rows: dict[str, list[object]]) -> dict[str, np.ndarray]:
    numeric = {k: np.array(v, dtype=float) for k, v in rows.items() if k not in ("host", "name")}
    text = {k: [str(x) for x in v] for k, v in rows.items() if k in ("host", "name")}
    return table(numeric, text)


def test_a_cpu_rate_step_gives_the_known_extra_cpu_seconds() -> None:
    # 0.25 CPU-s/s in the baseline, 0.75 during 10 s of migration: 5 extra CPU-seconds.
    host = host_section(as_table(cpu_rows(42, "source", 0.25, 0.75)), {}, {}, WINDOWS, 200.0)
    cpu = host.cpu_seconds
    assert cpu.baseline_rate == pytest.approx(0.25, abs=0.01)
    assert cpu.during == pytest.approx(7.5, abs=0.2)
    assert cpu.extra == pytest.approx(5.0, abs=0.2)
    assert host.cpu_pct_peak == pytest.approx(75.0, abs=1.0)
    # Steady 1 MB/s of disk writes costs nothing extra.
    assert host.disk_write_bytes.during == pytest.approx(10e6, abs=1.1e6)
    assert host.disk_write_bytes.extra == pytest.approx(0.0, abs=1.1e6)
    assert host.rss_bytes.model_dump() == {"before": 100e6, "peak": 150e6, "after": 150e6}


def test_a_process_that_starts_during_the_migration_counts_from_zero() -> None:
    rows = cpu_rows(7, "destination", 0.5, 0.5)
    keep = [i for i, t in enumerate(rows["t_ns"]) if float(t) >= T0 + 12 * S]  # type: ignore[arg-type]
    late = {k: [v[i] for i in keep] for k, v in rows.items()}
    late["cpu_s"] = [float(c) - 6.0 for c in late["cpu_s"]]  # type: ignore[arg-type]
    host = host_section(as_table(late), {}, {}, WINDOWS, 200.0)
    # It used 0.5 CPU-s/s from 12 s: 4 s of it inside the window; no baseline.
    assert host.cpu_seconds.during == pytest.approx(4.0, abs=0.15)
    assert host.cpu_seconds.baseline_rate == 0.0
    assert host.rss_bytes.before == 0.0


def test_counter_delta_rounds_the_window_outward() -> None:
    t = np.array([0.0, 10.0, 20.0, 30.0])
    v = np.array([0.0, 1.0, 2.0, 3.0])
    assert counter_delta(t, v, (15, 25)) == 2.0  # from the sample at 10 to the one at 30
    assert counter_delta(t, v, (10, 20)) == 1.0


def test_phases_from_events() -> None:
    events = [
        Event.model_validate({"name": "", **e})
        for e in (
            {"t_s": 10.5, "host": "source", "event": "migration_pass", "data": {"pass": 1}},
            {"t_s": 12.0, "host": "source", "event": "migration_pass", "data": {"pass": 2}},
            {"t_s": 13.0, "host": "source", "event": "stopped", "data": {}},
            {"t_s": 13.1, "host": "source", "event": "migration", "data": {"status": "completed"}},
            {"t_s": 13.2, "host": "destination", "event": "resumed", "data": {}},
        )
    ]
    phases = phases_section(events, WINDOWS).model_dump(mode="json")
    assert phases["iterations"] == [{"pass": 1, "t_s": 0.5}, {"pass": 2, "t_s": 2.0}]
    assert phases["stop_and_copy_s"] == pytest.approx(3.0)
    assert phases["completion_s"] == pytest.approx(3.1)
    assert phases["resume_on_destination_s"] == pytest.approx(3.2)
    assert phases["windows_s"]["during"] == [10.0, 20.0]


def test_data_and_amplification() -> None:
    progress = {
        "transferred_bytes": np.array([0.0, 5e8, 1.07374182e9]),
        "dirty_rate_mib_s": np.array([0.0, 10.0, 20.0]),
        "iterations": np.array([1.0, 2.0, 5.0]),
    }
    data = data_section(progress, 512 * 1024 * 1024)
    assert data.amplification_ratio == pytest.approx(2.0, abs=0.001)
    assert data.iterations == 5
    assert data.dirty_rate_mib_s.model_dump() == {"mean": 10.0, "peak": 20.0}


def test_a_restarted_migration_counts_every_attempt() -> None:
    # Attempt 1 sent 300 MiB and was cancelled; attempt 2's counters started over at 0.
    progress = {
        "transferred_bytes": np.array([1e8, 3e8, np.nan, 0.0, 2e8, 4e8]) * 1.048576,
        "iterations": np.array([1.0, 4.0, np.nan, 1.0, 2.0, 3.0]),
        "attempt": np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0]),
    }
    data = data_section(progress, 700 * 1024 * 1024)
    assert data.transferred_bytes == 700 * 1024 * 1024
    assert data.iterations == 7
    assert data.amplification_ratio == 1.0


def result_for_checks(
    tx: float, observed: float, reported: float, total_s: float, off_wire_ms: float = 0.4
) -> Result:
    """A completed run's result (on a 1000 Mbit/s link) with the figures the checks compare."""
    t0 = 1_000 * S
    document = analyze(Path("/nonexistent-run"), result_of(completed_record(t0), t0)).model_dump()
    document["migration"].update(
        transferred_bytes=100_000_000, downtime_reported_ms=reported, total_time_s=total_s
    )
    document["service"].update(
        observed_downtime_ms=observed, probe_interval_ms=1.0, probe_replies_after_migration=10
    )
    document["resources"]["hosts"]["source"]["net_tx_bytes"]["during"] = tx
    document["outage"]["capture"] = {
        "network_outage_ms": 60.0, "network_outage_start_s": 1.0,
        "probe_minus_capture_ms": off_wire_ms, "replies_on_wire": 100, "replies_probe_missed": 0,
        "replies_not_on_wire": 0, "receive_offset_us": {"median": 5.0, "max_abs": 20.0},
        "kernel_dropped": 0, "guest_announce_s": None, "error": None,
    }  # fmt: skip
    return Result.model_validate(document)


def test_consistent_figures_pass_every_check() -> None:
    checks = consistency_checks(result_for_checks(1.05e8, 60.0, 57.0, 1.0))
    assert [c.ok for c in checks] == [True, True, True, True, True]


@pytest.mark.parametrize(
    ("args", "failing"),
    [
        ((0.9e8, 60.0, 57.0, 1.0), "source_uplink_carried_the_migration"),
        ((1.05e8, 40.0, 57.0, 1.0), "observed_downtime_covers_reported"),
        ((1.05e8, 60.0, 57.0, 0.5), "throughput_within_link_rate"),  # 1600 Mbit/s on 1000
        ((1.05e8, 60.0, 57.0, 1.0, -8.0), "probe_agrees_with_capture"),  # 8 ms off the wire
    ],
)
def test_each_inconsistency_is_caught(args: tuple[float, ...], failing: str) -> None:
    checks = consistency_checks(result_for_checks(*args))
    assert [c.name for c in checks if c.ok is False] == [failing]


@pytest.mark.parametrize(
    ("observed", "reported", "stop_s", "resume_s", "ok"),
    [
        (126.9, 134.0, 1.8219, 1.9368, True),  # libvirt's bookkeeping over the vCPUs' pause
        (110.0, 134.0, 1.8219, 1.9368, False),  # less than even the vCPUs were stopped
        (126.9, 134.0, None, None, False),  # without events: the reported figure is the floor
    ],
)
def test_the_downtime_floor_is_the_vcpus_pause_when_the_events_show_a_shorter_one(
    observed: float, reported: float, stop_s: float | None, resume_s: float | None, ok: bool
) -> None:
    result = result_for_checks(1.05e8, observed, reported, 1.0)
    result.phases.stop_and_copy_s, result.phases.resume_on_destination_s = stop_s, resume_s
    checks = {c.name: c for c in consistency_checks(result)}
    assert checks["observed_downtime_covers_reported"].ok is ok


def test_the_cpu_split_puts_the_guests_pause_beside_the_migrations_work() -> None:
    # A cold migration: the host's total fell (the guest's vCPUs stopped: -1.5 CPU-s) while the
    # migration's own threads worked (+0.7): the headline is the work, not the sum (-0.8).
    total = WindowFigures(during=2.0, extra=-0.8)
    work, vcpu = cpu_split(total, WindowFigures(during=0.5, extra=-1.5))
    assert work == WindowFigures(during=1.5, extra=0.7)
    assert vcpu == WindowFigures(during=0.5, extra=-1.5)
    # A host without a VM (the storage host): all of it is the migration's.
    assert cpu_split(total, None)[0] == WindowFigures(during=2.0, extra=-0.8)
    unsampled = WindowFigures(during=None, extra=None)
    assert cpu_split(unsampled, None)[0] == unsampled


def test_a_broken_stream_may_leave_one_send_buffer_off_the_wire() -> None:
    # 250 KB short of what QEMU counted: what sat in the broken socket's send buffer when a
    # cut link paused post-copy (the fault matrix's link-down runs). One break allows 4 MiB.
    result = result_for_checks(100_000_000 - 250_000, 60.0, 57.0, 1.0)
    checks = {c.name: c for c in consistency_checks(result)}
    assert checks["source_uplink_carried_the_migration"].ok is False  # no break: no allowance
    result.migration.postcopy_pauses = [
        PostcopyPause(paused_at_s=2.0, recovered_at_s=4.2, paused_ms=2200.0,
                      cause="the stream broke", reconnections=1)
    ]  # fmt: skip
    uplink = {c.name: c for c in consistency_checks(result)}["source_uplink_carried_the_migration"]
    assert uplink.ok is True and uplink.figures["stream_breaks"] == 1
    # more than a send buffer short is still a wrong count
    result.resources.hosts["source"].net_tx_bytes.during = 100_000_000 - 5 * 1024 * 1024
    assert {c.name: c.ok for c in consistency_checks(result)}[uplink.name] is False
