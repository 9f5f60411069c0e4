"""What a front end shows while a sweep runs: nothing, or a rich progress bar with an ETA."""

from __future__ import annotations

import datetime as dt
import statistics
import time
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from vmigrate.sweep.database import RunRecord
from vmigrate.sweep.plan import PlannedRun, Sweep, one_line

if TYPE_CHECKING:
    from vmigrate.hypervisor.base import MigrationStats
    from vmigrate.migration.preflight import Check


MIB = 1024 * 1024
TIMES = "\u00d7"  # multiplication sign


class SweepProgress(Protocol):
    """What a front end is told while a sweep runs."""

    def start(self, sweep: Sweep, todo: int, skipped: int) -> None: ...

    def run_started(self, run: PlannedRun, index: int, todo: int) -> None: ...

    def run_finished(self, rec: RunRecord, index: int, todo: int) -> None: ...

    def finish(self) -> None: ...


class SilentProgress:
    """Shows nothing (tests, scripts)."""

    def start(self, sweep: Sweep, todo: int, skipped: int) -> None:
        pass

    def run_started(self, run: PlannedRun, index: int, todo: int) -> None:
        pass

    def run_finished(self, rec: RunRecord, index: int, todo: int) -> None:
        pass

    def finish(self) -> None:
        pass


class _EtaColumn(ProgressColumn):
    """Time left: the mean duration of the finished runs times the runs left, minus the time the
    current run has already taken (rich's own estimate needs progress every few seconds)."""

    def render(self, task: Task) -> Text:
        mean_s = task.fields.get("mean_run_s")
        started = task.fields.get("run_started")
        if task.finished:
            return Text("done", style="progress.remaining")
        if not isinstance(mean_s, float) or task.total is None:
            return Text("ETA -:--:--", style="progress.remaining")
        left = max(task.total - task.completed, 0)
        in_run = time.monotonic() - started if isinstance(started, float) else 0.0
        eta = mean_s * max(left - 1, 0) + max(mean_s - in_run, 0.0)
        return Text(f"ETA {dt.timedelta(seconds=round(eta))}", style="progress.remaining")


class RichSweepProgress:
    """A progress bar over all runs with an ETA, a line per finished run, and — as the
    experiment observer — the current stage of the current run under the bar."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._durations: list[float] = []
        self._current = ""

    def start(self, sweep: Sweep, todo: int, skipped: int) -> None:
        total = len(sweep.runs())
        self.console.print(
            f"[bold]sweep {sweep.name}[/bold]: {len(sweep.cells)} cell"
            f"{'s' if len(sweep.cells) != 1 else ''} {TIMES} {sweep.repetitions} repetition"
            f"{'s' if sweep.repetitions != 1 else ''} = {total} runs"
            + (f"; {skipped} already done (resuming)" if skipped else "")
            + (f"; {todo} to run" if todo != total else ""),
            highlight=False,
            soft_wrap=True,
        )
        if not todo:
            return
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]sweep[/bold]"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            _EtaColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "sweep", total=todo, detail="", mean_run_s=None, run_started=None
        )

    def _update(self, **fields: Any) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **fields)

    def run_started(self, run: PlannedRun, index: int, todo: int) -> None:
        self._current = f"{run.cell.label} #{run.repetition}"
        self._update(run_started=time.monotonic(), detail=self._current)

    def run_finished(self, rec: RunRecord, index: int, todo: int) -> None:
        self._durations.append(rec.duration_s)
        mean_s = statistics.fmean(self._durations)
        self._update(advance=1, mean_run_s=mean_s, run_started=None, detail="")
        self.console.print(run_line(rec, index, todo), highlight=False, soft_wrap=True)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # the experiment observer: the current run's stage, under the bar
    def stage(self, text: str) -> None:
        if self._progress is None:  # before or after the runs (e.g. the testbed going down)
            self.console.print(f"[cyan]•[/cyan] {text}", highlight=False)
        else:
            self._update(detail=f"{self._current}: {text}")

    def check(self, check: Check) -> None:
        from vmigrate.report.terminal import check_line

        if check.status == "fail":  # the run will say so; show why as it happens
            self.console.print(check_line(check), highlight=False, soft_wrap=True)

    def migration_progress(self, elapsed_s: float, stats: MigrationStats) -> None:
        self._update(
            detail=f"{self._current}: migrating {stats.percent_sent:.0f} % · "
            f"{stats.remaining_bytes / MIB:.0f} MiB left · {elapsed_s:.0f} s"
        )


def run_line(rec: RunRecord, index: int, todo: int) -> str:
    """One line (rich markup) for a finished run: outcome and its headline figures."""
    colour = "green" if rec.outcome == "completed" else "red"
    mark = "✓" if rec.outcome == "completed" else "✗"
    text = (
        f"[{colour}]{mark}[/{colour}] [{index + 1}/{todo}] {rec.run.cell.label} "
        f"#{rec.run.repetition}: [{colour}]{rec.outcome}[/{colour}]"
    )
    if rec.result is not None:
        mig, svc = rec.result.migration, rec.result.service
        parts = [
            _fig(mig.total_time_s, " s", 2, "migration "),
            _fig(svc.observed_downtime_ms, " ms", 0, "downtime "),
            _fig(mig.downtime_reported_ms, " ms", 0, "reported "),
        ]
        text += " · " + " · ".join(p for p in parts if p) if any(parts) else ""
    if rec.error:
        text += f" · [red]{one_line(rec.error)[:160]}[/red]"
    return text + f" [dim]({rec.duration_s:.0f} s)[/dim]"


def _fig(value: float | None, unit: str, digits: int, label: str) -> str:
    return f"{label}{value:,.{digits}f}{unit}" if value is not None else ""
