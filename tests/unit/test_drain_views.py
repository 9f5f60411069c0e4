"""The drain's views render: the live board with guests in every phase (and the lane observer
that feeds it), the summary table, and report.html with its Gantt over the uplinks."""

from __future__ import annotations

import io
import time
from pathlib import Path

from drain_fakes import RELEASE, S, fake_drain, lane_record, write_host_series
from rich.console import Console

from vmigrate.drain.account import DrainRecord, LaneRecord, make_bill
from vmigrate.drain.bill import DrainBill
from vmigrate.drain.inputs import declared_inputs, plan_drain
from vmigrate.drain.progress import DrainBoard, LaneObserver, LanePhase
from vmigrate.hypervisor.base import MigrationStats, MigrationStatus
from vmigrate.migration.orchestrator import Outcome
from vmigrate.report.drain_terminal import DrainTerminal, board_table, summary_table
from vmigrate.report.html.drain_page import (
    PLANNED_FILL,
    render_drain_html,
    render_drain_report,
    timeline_figure,
)


def rendered(renderable: object, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def board() -> DrainBoard:
    b = DrainBoard("d")
    for i, phase in enumerate(LanePhase):
        lane = b.add(f"g{i}", "web", "source")
        if phase not in (LanePhase.BOOTING, LanePhase.READY, LanePhase.QUEUED):
            lane.release("hv3")
        lane.phase = phase
    return b


def test_the_board_shows_every_guest_in_every_phase() -> None:
    b = board()
    observer = LaneObserver(b.lanes["g3"])  # migrating
    observer.stage("migrating (precopy)")
    observer.migration_progress(
        1.0,
        MigrationStats(status=MigrationStatus.ACTIVE, transferred_bytes=75 * 2**20,
                       remaining_bytes=25 * 2**20, throughput_mbit_s=380.0, iterations=2),
    )  # fmt: skip
    lane = b.lanes["g3"]
    assert (round(lane.percent), lane.remaining_mib, lane.passes) == (75, 25.0, 2)
    text = rendered(board_table(b, now=time.monotonic() + 2))
    for phase in LanePhase:
        assert phase.value in text
    assert "hv3" in text and "380" in text and "migrating (precopy)" in text
    assert "1 booting" in text and "1 migrating" in text
    assert rendered(board_table(DrainBoard("empty")))  # no guest yet: still a table


def test_the_terminal_front_starts_and_stops_its_live_table() -> None:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    front = DrainTerminal(console)
    front.stage("booting 3 guests on source")
    front.start(board())
    front.stage("draining source")
    front.stop()
    front.stop()  # twice: nothing happens
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "booting 3 guests" in out and "draining source" in out and "g3" in out


def bill(tmp_path: Path) -> DrainBill:
    drain = fake_drain()
    inputs = declared_inputs(drain)
    lanes = [
        lane_record(drain, "d-web-1", "hv3", (0.2, 3.0)),
        lane_record(drain, "d-web-2", "destination", (0.2, 4.0), outcome=Outcome.FAILED),
        LaneRecord(drain.guest("d-mem-1"), error="the guest did not boot"),
    ]
    write_host_series(tmp_path)
    record = DrainRecord(
        drain=drain, testbed="vmig", hypervisors=3, started_at="now",
        marks_ns={"start": RELEASE - 30 * S, "first_release": RELEASE}, inputs=inputs,
        plan=plan_drain(drain, inputs), lanes=lanes,
    )  # fmt: skip
    return make_bill(record, tmp_path, "qemu")


def test_the_summary_table_has_every_guest_and_the_drain_line(tmp_path: Path) -> None:
    text = rendered(summary_table(bill(tmp_path)), width=200)
    assert "vmigrate drain d: incomplete" in text
    for name in ("d-web-1", "d-web-2", "d-mem-1"):
        assert name in text
    assert "drain time 4.0 s (planned" in text and "failed" in text


def test_an_80_column_summary_keeps_every_name_and_figure_whole(tmp_path: Path) -> None:
    """In a narrow console the start, end and bytes columns go; nothing else is cut."""
    the_bill = bill(tmp_path)
    text = rendered(summary_table(the_bill, 80), width=80)
    assert "…" not in text
    for name in ("d-web-1", "d-web-2", "d-mem-1"):
        assert name in text
    assert "start" not in text and "sent" not in text and "outage" in text
    assert "start" in rendered(summary_table(the_bill, 200), width=200)


def test_the_report_has_the_gantt_over_the_links_and_every_guest(tmp_path: Path) -> None:
    the_bill = bill(tmp_path)
    page = render_drain_html(tmp_path, the_bill)
    assert page.startswith("<!DOCTYPE html>") and "drain d" in page
    assert "planned (outlined) and measured (solid), by destination" in page
    assert "sent (solid) and received (dotted)" in page
    assert '"planned"' in page and "source tx" in page and "hv3 rx" in page
    assert 'href="vms/d-web-1/report.html"' in page
    assert "the guest did not boot" in page and "did not boot" in page
    assert "The plan&#x27;s inputs" in page or "The plan's inputs" in page
    path = render_drain_report(tmp_path, the_bill)
    assert path == tmp_path / "report.html" and path.read_text() == page


def test_the_time_line_legend_names_each_host_once(tmp_path: Path) -> None:
    """One key for the planned bars and one per host, the host's bars and uplink toggled
    together under it (not a key per guest, nor per link direction); planned bars pale and
    outlined, measured ones solid in their destination's colour."""
    fig, _ = timeline_figure(bill(tmp_path), tmp_path)
    keys = [trace for trace in fig.data if trace.showlegend is not False]
    assert [key.name for key in keys] == ["planned", "source", "destination", "hv3"]
    assert {trace.legendgroup for trace in fig.data} == {key.legendgroup for key in keys}
    assert all(key.legendgroup == key.name and key.x == (None,) for key in keys)  # keys only
    hv3 = {(trace.type, trace.name) for trace in fig.data if trace.legendgroup == "hv3"}
    assert {("bar", "→ hv3"), ("scatter", "hv3 tx"), ("scatter", "hv3 rx")} <= hv3
    bars = [trace for trace in fig.data if trace.type == "bar"]
    planned = [bar for bar in bars if bar.legendgroup == "planned"]
    measured = [bar for bar in bars if bar.legendgroup != "planned"]
    assert len(planned) == 3 and len(measured) == 2
    assert {bar.marker.color for bar in planned} == {PLANNED_FILL}
    assert all(bar.marker.line.width for bar in planned)  # outlined in the planned host's colour
    assert {bar.marker.color for bar in measured}.isdisjoint({PLANNED_FILL})


def test_a_report_without_series_or_plan_still_renders(tmp_path: Path) -> None:
    the_bill = bill(tmp_path).model_copy(update={"plan": None, "inputs": None, "prediction": None})
    page = render_drain_html(tmp_path / "elsewhere", the_bill)
    assert "no link samples recorded" in page
