"""`vmigrate report RUN`: redo the analysis from a run's recorded data and re-render its reports.

The run's result.json keeps what only the run itself knew (scenario, timeline, events, the
hypervisor's figures, verification); every cost section is recomputed from RUN/series, so a
newer vmigrate re-reads old runs with its newer analysis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vmigrate.analysis import analyze
from vmigrate.errors import UsageError
from vmigrate.report.html.page import render_report
from vmigrate.report.result import RESULT_FILE, write_result


def load_result(run_dir: Path) -> dict[str, Any]:
    """A run's result.json, or a clear error when `run_dir` is not a run directory."""
    path = run_dir / RESULT_FILE
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{run_dir} has no {RESULT_FILE}: give the directory a `vmigrate run` wrote (--out)"
        ) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}); re-run the experiment") from None
    if "clock" not in result or "timeline_s" not in result:
        raise UsageError(f"{path} predates recorded series (no clock); re-run the experiment")
    return result


# What damaged recorded data (a hand-edited result.json, a truncated series) raises in the
# analysis: bad input, said in one line, not a traceback.
DAMAGE = (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError)


def reanalyse(run_dir: Path) -> dict[str, Any]:
    """A run's result, its cost sections recomputed from RUN/series.

    :raise UsageError: not a run directory, or its files are damaged."""
    result = load_result(run_dir)
    try:
        return analyze(run_dir, result)
    except DAMAGE as exc:
        raise UsageError(
            f"{run_dir} cannot be re-analysed: its result.json or series/ are damaged "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); re-run the experiment"
        ) from exc


def rebuild(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """Recompute result.json from the recorded series and write report.html beside it."""
    result = reanalyse(run_dir)
    write_result(run_dir, result)
    return result, render_report(run_dir)
