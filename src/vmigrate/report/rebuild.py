"""`vmigrate report RUN`: redo the analysis from a run's recorded data and re-render its reports.

The run's result.json keeps what only the run itself knew (scenario, timeline, events, the
hypervisor's figures, verification); every cost section is recomputed from RUN/series, so a
newer vmigrate re-reads old runs with its newer analysis.
"""

from __future__ import annotations

from pathlib import Path

from vmigrate.analysis import analyze
from vmigrate.errors import UsageError
from vmigrate.report.html.page import render_report
from vmigrate.result import Result, load_recorded, write_result

# What damaged recorded data (a hand-edited result.json, a truncated series) raises in the
# analysis: bad input, said in one line, not a traceback.
DAMAGE = (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError)


def reanalyse(run_dir: Path) -> Result:
    """A run's result, its cost sections recomputed from RUN/series.

    :raise UsageError: not a run directory, or its files are damaged."""
    recorded = load_recorded(run_dir)
    try:
        return analyze(run_dir, recorded)
    except DAMAGE as exc:
        raise UsageError(
            f"{run_dir} cannot be re-analysed: its result.json or series/ are damaged "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); re-run the experiment"
        ) from exc


def rebuild(run_dir: Path) -> tuple[Result, Path]:
    """Recompute result.json from the recorded series and write report.html beside it."""
    result = reanalyse(run_dir)
    write_result(run_dir, result)
    return result, render_report(run_dir, result)
