"""Running a sweep: every run without a result yet, each recorded as it ends; then the summary
and the comparison page."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmigrate.config import Scenario
from vmigrate.errors import ScenarioError, UsageError
from vmigrate.report.comparison import render_comparison
from vmigrate.result import Result
from vmigrate.sweep.database import RunRecord, SweepDatabase, flatten, scenario_json
from vmigrate.sweep.plan import PlannedRun, Sweep, load_sweep, one_line
from vmigrate.sweep.progress import SilentProgress, SweepProgress
from vmigrate.sweep.summary import summarize

SWEEP_DB = "sweep.db"
SUMMARY_FILE = "summary.json"
RUNS_DIR = "runs"
ERROR_OUTCOME = "error"  # the runner raised: no result.json; retried when the sweep resumes

Runner = Callable[[Scenario, Path], Result]


@dataclass
class SweepSummary:
    """What a sweep left behind, and how its runs went."""

    sweep_dir: Path
    db_path: Path
    summary_path: Path
    comparison_path: Path
    ran: int
    skipped: int
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def crashed(self) -> int:
        """Runs without a result (the runner raised); a resumed sweep retries them."""
        return sum(
            cell["outcomes"].get(ERROR_OUTCOME, 0) for cell in self.document.get("cells", [])
        )


def run_sweep(
    sweep_path: Path,
    out_dir: Path,
    runner: Runner,
    progress: SweepProgress | None = None,
    overrides: Sequence[str] = (),
) -> SweepSummary:
    """Validate SWEEP.toml (every cell), then run what `out_dir` does not hold yet."""
    return execute_sweep(load_sweep(sweep_path, overrides), out_dir, runner, progress)


def execute_sweep(
    sweep: Sweep, out_dir: Path, runner: Runner, progress: SweepProgress | None = None
) -> SweepSummary:
    """Run every run of `sweep` that has no result in out_dir/sweep.db yet, recording each one
    as it ends; then write summary.json and comparison.html.

    A run whose runner raises is recorded as outcome "error" and the sweep goes on (UsageError
    excepted: the machine or the input is wrong, so every other run would fail alike). Refuses
    (ScenarioError) when out_dir holds runs of the same id made with a different scenario."""
    progress = progress or SilentProgress()
    db_path = out_dir / SWEEP_DB
    done: dict[str, str] = {}
    if db_path.exists():
        with contextlib.closing(SweepDatabase(db_path)) as db:
            done = db.finished()
    planned = sweep.runs()
    for run in planned:
        if run.run_id in done and done[run.run_id] != scenario_json(run.cell.scenario):
            raise ScenarioError(
                f"{out_dir}: run {run.run_id} there was made with another scenario "
                f"({_differences(done[run.run_id], scenario_json(run.cell.scenario))}); "
                "use another --out directory, or remove that one"
            )
    todo = [run for run in planned if run.run_id not in done]
    out_dir.mkdir(parents=True, exist_ok=True)
    with SweepDatabase(db_path) as db:
        db.save_sweep(sweep)
        progress.start(sweep, len(todo), len(planned) - len(todo))
        try:
            for index, run in enumerate(todo):
                progress.run_started(run, index, len(todo))
                rec = _run_one(run, out_dir, runner)
                db.record(rec, f"{RUNS_DIR}/{run.dir_name}")
                progress.run_finished(rec, index, len(todo))
        finally:
            progress.finish()
        document = summarize(db)
    summary_path = out_dir / SUMMARY_FILE
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(summary_path)
    comparison = render_comparison(out_dir)
    return SweepSummary(
        sweep_dir=out_dir,
        db_path=db_path,
        summary_path=summary_path,
        comparison_path=comparison,
        ran=len(todo),
        skipped=len(planned) - len(todo),
        document=document,
    )


def _run_one(run: PlannedRun, out_dir: Path, runner: Runner) -> RunRecord:
    """One run in a fresh directory (leftovers of an interrupted attempt removed first)."""
    run_dir = out_dir / RUNS_DIR / run.dir_name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.UTC).isoformat()
    t0 = time.monotonic()
    result: Result | None
    try:
        result = runner(run.cell.scenario, run_dir)
        outcome, error = result.outcome.value, result.error
    except UsageError:
        raise
    except Exception as exc:
        result, outcome = None, ERROR_OUTCOME
        error = f"{type(exc).__name__}: {one_line(str(exc))}" if str(exc) else type(exc).__name__
    return RunRecord(
        run=run,
        started_at=started_at,
        duration_s=time.monotonic() - t0,
        outcome=outcome,
        error=str(error) if error else None,
        result=result,
    )


def _differences(before: str, after: str) -> str:
    """The first scenario keys that differ between two scenario_json strings, for a message."""
    old = flatten(json.loads(before))
    new = flatten(json.loads(after))
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:2])
    return shown + (f" (and {len(changed) - 2} more)" if len(changed) > 2 else "")
