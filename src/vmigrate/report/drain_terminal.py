"""A drain in the terminal: the drain's stages as lines, every guest's migration at once in one
live table (its phase, destination, a bar of what it sent, rate, what is left, elapsed), and at
the end a summary table with the plan beside what happened."""

from __future__ import annotations

import time

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vmigrate.drain.bill import DrainBill, DrainOutcome, VmBill
from vmigrate.drain.progress import DrainBoard, LanePhase, LaneStatus

PHASE_STYLE = {
    LanePhase.BOOTING: "dim", LanePhase.READY: "cyan", LanePhase.QUEUED: "cyan",
    LanePhase.MIGRATING: "bold yellow", LanePhase.AFTER: "green", LanePhase.DONE: "green",
    LanePhase.FAILED: "bold red",
}  # fmt: skip
BAR_WIDTH = 12
STAGE_WIDTH = 44


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def _bar(lane: LaneStatus) -> Text:
    """What its migration sent so far: a bar and its percentage (nothing before its release)."""
    if lane.released_at is None:
        return Text("")
    percent = 100.0 if lane.status == "completed" else min(max(lane.percent, 0.0), 100.0)
    filled = round(percent / 100 * BAR_WIDTH)
    bar = Text("━" * filled, style="green" if percent >= 100 else "yellow")
    bar.append("─" * (BAR_WIDTH - filled), style="dim")
    bar.append(f" {percent:3.0f}%")
    return bar


def board_table(board: DrainBoard, now: float | None = None) -> Table:
    """Every guest of the drain in one table, as it is now."""
    now = now if now is not None else time.monotonic()
    counts = board.counts()
    summary = ", ".join(f"{n} {phase.value}" for phase, n in counts.items() if n)
    table = Table(
        title=f"drain {escape(board.name)}: {summary}", box=box.SIMPLE_HEAD, pad_edge=False,
        collapse_padding=True, title_justify="left",
    )  # fmt: skip
    lanes = board.lanes.values()
    # every figure keeps its width; the stage takes what is left (a narrow terminal)
    table.add_column("guest", no_wrap=True, min_width=max((len(x.name) for x in lanes), default=5))
    table.add_column("phase", no_wrap=True, min_width=max(len(phase) for phase in LanePhase))
    hosts = [len(x.destination or "") for x in lanes]
    table.add_column("→ to", no_wrap=True, min_width=max([4, *hosts]))
    table.add_column("sent", no_wrap=True, min_width=BAR_WIDTH + 5)
    for column, width in (("Mbit/s", 6), ("left\nMiB", 5), ("pass", 4), ("elapsed\ns", 7)):
        table.add_column(column, justify="right", no_wrap=True, min_width=width)
    table.add_column("stage", max_width=STAGE_WIDTH, overflow="ellipsis", no_wrap=True)
    for lane in board.lanes.values():
        style = PHASE_STYLE[lane.phase]
        migrating = lane.phase == LanePhase.MIGRATING
        table.add_row(
            escape(lane.name), f"[{style}]{lane.phase.value}[/{style}]",
            escape(lane.destination or "·"), _bar(lane),
            _num(lane.throughput_mbit_s, 0) if migrating else "",
            _num(lane.remaining_mib, 0) if migrating else "",
            str(lane.passes) if lane.passes else "",
            _num(lane.elapsed_s(now), 1), escape(lane.outcome or lane.stage),
        )  # fmt: skip
    return table


class DrainTerminal:
    """The drain's front end (drain/progress.py's DrainFront) in a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None
        self._board: DrainBoard | None = None

    def stage(self, text: str) -> None:
        """A line above the live table (or alone before it starts)."""
        self.console.print(f"[cyan]•[/cyan] {escape(text)}", highlight=False)

    def start(self, board: DrainBoard) -> None:
        self._board = board
        self._live = Live(
            console=self.console, refresh_per_second=4, transient=False,
            get_renderable=lambda: Group(board_table(board)),
        )  # fmt: skip
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _cell(vm: VmBill) -> tuple[str, str]:
    """Measured and planned migration time of a guest, as table cells."""
    planned = vm.predicted.time_s if vm.predicted else None
    return _num(vm.migration_time_s, 2), _num(planned, 2)


#: Below this console width the summary leaves out when each guest started and ended and what
#: it sent (drain.json has them): every figure keeps its digits, none is cut.
WIDE_SUMMARY = 110


def summary_table(bill: DrainBill, width: int = WIDE_SUMMARY) -> Table:
    """Per guest: where to, when, its time against the plan's, its pause and outage, whether it
    is on its new host intact; the drain's totals in the caption. In a console narrower than
    WIDE_SUMMARY, without the start, end and bytes columns."""
    colour = "green" if bill.outcome == DrainOutcome.COMPLETED else "red"
    table = Table(
        title=f"vmigrate drain {escape(bill.name)}: [{colour}]{bill.outcome.value}[/{colour}]",
        box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
    )  # fmt: skip
    wide = width >= WIDE_SUMMARY
    table.add_column("guest", no_wrap=True)
    table.add_column("→ to", no_wrap=True)
    figures = ("start\ns", "end\ns", "time\ns", "plan\ns", "error\n%", "pause\nms",
               "outage\nms", "p99 ms\nduring", "sent\nMiB")  # fmt: skip
    shown = [c for c in figures if wide or c not in ("start\ns", "end\ns", "sent\nMiB")]
    for column in shown:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("intact", no_wrap=True)
    for vm in bill.vms:
        measured, planned = _cell(vm)
        verdict = (
            "[green]yes[/green]" if vm.verified else f"[red]{escape(vm.outcome or 'no')}[/red]"
        )
        cells = dict(zip(figures, (
            _num(vm.start_s, 1), _num(vm.end_s, 1), measured, planned,
            _num(vm.errors.time_pct if vm.errors else None, 0),
            _num(vm.downtime_ms, 0), _num(vm.service_outage_ms, 0),
            _num(vm.latency_p99_during_ms, 0), _num(vm.transferred_bytes / 1024**2, 0),
        ), strict=True))  # fmt: skip
        table.add_row(
            escape(vm.name), escape(vm.destination_host or "—"),
            *(cells[c] for c in shown), verdict,
        )  # fmt: skip
    table.caption = summary_line(bill)
    return table


def summary_line(bill: DrainBill) -> str:
    """The drain in one line (rich markup): its time against the plan's, and the worst."""
    p, worst = bill.prediction, bill.worst
    line = f"drain time {_num(bill.total_drain_time_s, 1, ' s')}"
    if p is not None:
        line += (
            f" (planned {p.predicted_drain_time_s:.1f} s, error "
            f"{_num(p.drain_time_error_pct, 0, ' %')}; per guest time error: median size "
            f"{_num(p.median_abs_vm_time_error_pct, 0, ' %')}, bias "
            f"{_num(p.median_vm_time_error_pct, 0, ' %')})"
        )
    if worst.largest_outage_vm:
        line += (
            f"; worst outage {worst.largest_outage_ms:.0f} ms ({escape(worst.largest_outage_vm)})"
        )
    if worst.worst_p99_vm:
        line += f"; worst p99 {worst.worst_p99_ms:.0f} ms ({escape(worst.worst_p99_vm)})"
    if bill.error:
        line += f"\n[red]{escape(bill.error)}[/red]"
    return line
