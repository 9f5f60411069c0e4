"""The comparison page of a sweep: SWEEP_DIR/comparison.html, one self-contained file.

Grouped bars with 95 % confidence intervals per cell (total migration time, observed vs
reported downtime, p99 latency during the migration, migration CPU per host, bytes transferred),
each completed run drawn as a dot over its bar, then a table of every cell's statistics and
outcomes and one of every run. It reads only SWEEP_DIR/summary.json (written by the sweep from
sweep.db), looks like the run report (report/html/) and inlines plotly.js once, so it works
offline. Cells whose runs did not all complete say so in red. The charts are drawn by
report/comparison_charts.py.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.offline

from vmigrate.errors import UsageError
from vmigrate.report.comparison_charts import AXIS_JS, CHARTS, chart_section, outcomes_text
from vmigrate.report.html.formatting import esc, fmt, num, obj
from vmigrate.report.html.style import CSS, OUTCOME_CLASS

COMPARISON_FILE = "comparison.html"
SUMMARY_FILE = "summary.json"

EXTRA_CSS = """
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr));
  gap: 0 14px; align-items: start; }
.charts section { padding: 12px 10px 4px; min-width: 0; overflow: hidden; }
.charts h2, .charts .legend-note { margin-left: 8px; }
table.stats td { white-space: nowrap; }
table.stats td .extra { white-space: nowrap; }
td.bad, span.bad { color: var(--fail); font-weight: 600; }
.cellid { color: var(--muted); font-size: 11.5px; }
h2 .scale { float: right; font-size: 12px; font-weight: normal; color: var(--muted); }
h2 .scale button { font: inherit; margin-left: 4px; padding: 1px 8px; border-radius: 6px;
  border: 1px solid var(--line); background: #fff; color: var(--fg); cursor: pointer; }
h2 .scale button.on { background: var(--fg); color: #fff; border-color: var(--fg); }
"""


def _unit_key(key: str) -> str:
    """A name whose suffix gives `fmt` the unit of a dotted figure (`…latency_ms.during.p99`)."""
    if ".cpu_seconds." in key:
        return "cpu_s"
    for part in reversed(key.split(".")):
        for suffix in ("_mbit_s", "_bytes", "_ms", "_s"):
            if part.endswith(suffix):
                return "x" + suffix
    return "x"


def _stat_cell(key: str, stats: Mapping[str, Any]) -> str:
    """mean ± CI half-width, and median · stdev · n below it."""
    unit = _unit_key(key)
    mean = num(stats.get("mean"))
    if mean is None:
        return '<span class="muted">—</span>'
    half = num(stats.get("ci95_half"))
    ci = f" ± {fmt(unit, half)}" if half is not None else ""
    sub = (
        f"median {fmt(unit, stats.get('median'))} · sd {fmt(unit, stats.get('stdev'))} · "
        f"n {fmt('x', stats.get('n'))}"
    )
    return f'{fmt(unit, mean)}{ci}<span class="extra">{sub}</span>'


def _stats_table(summary: Mapping[str, Any], cells: Sequence[Mapping[str, Any]]) -> str:
    """Every cell: runs completed (red when not all), outcomes, every headline figure."""
    headline = obj(summary.get("headline"))
    header = ["cell", "completed", "outcomes", *headline.values()]
    rows = []
    for cell in cells:
        runs, completed = int(cell.get("runs", 0)), int(cell.get("completed", 0))
        bad = completed < runs or runs == 0
        done = f'<span class="{"bad" if bad else "yes"}">{completed} / {runs}</span>'
        others = outcomes_text(cell)
        outcomes = f'<span class="bad">{esc(others)}</span>' if others else esc("all completed")
        figures = obj(cell.get("figures"))
        rows.append(
            [
                f"<b>{esc(cell.get('label', ''))}</b>"
                f'<div class="cellid"><code>{esc(cell.get("cell_id", ""))}</code></div>',
                done,
                outcomes,
                *(_stat_cell(key, obj(figures.get(key))) for key in headline),
            ]
        )
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        '<section id="statistics"><h2>Statistics per cell <span class="muted small">'
        f"{esc(summary.get('statistics', ''))}</span></h2>"
        '<div style="overflow-x:auto"><table class="grid numbers stats">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>"
    )


def _runs_table(cells: Sequence[Mapping[str, Any]]) -> str:
    """Every recorded run: outcome, figures, error, and a link to its own report."""
    header = [
        "run",
        "outcome",
        "started",
        "took",
        "total time",
        "downtime observed",
        "downtime reported",
        "report",
        "error",
    ]
    rows = []
    count = 0
    for cell in cells:
        for run in cell.get("run_list", []):
            count += 1
            outcome = str(run.get("outcome", "?"))
            figures = obj(run.get("figures"))
            link = '<span class="muted">—</span>'
            if run.get("has_report") and run.get("run_dir"):
                href = urllib.parse.quote(f"{run['run_dir']}/report.html")
                link = f'<a href="{esc(href)}">report</a>'
            rows.append(
                [
                    f"<code>{esc(run.get('run_id', ''))}</code>",
                    f'<span class="badge {OUTCOME_CLASS.get(outcome, "fail")}">'
                    f"{esc(outcome)}</span>",
                    esc(run.get("started_at") or "—"),
                    fmt("x_s", run.get("duration_s")),
                    fmt("x_s", figures.get("migration.total_time_s")),
                    fmt("x_ms", figures.get("service.observed_downtime_ms")),
                    fmt("x_ms", figures.get("migration.downtime_reported_ms")),
                    link,
                    f'<span class="no">{esc(run["error"])}</span>' if run.get("error") else "",
                ]
            )
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<section id="runs"><details><summary>Runs ({count})</summary>'
        '<div style="overflow-x:auto"><table class="grid compact">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></details></section>"
    )


def _header(summary: Mapping[str, Any], cells: Sequence[Mapping[str, Any]]) -> str:
    """Sweep name, a badge for how complete it is, and its shape."""
    repetitions = int(summary.get("repetitions", 0) or 0)
    planned = len(cells) * repetitions
    recorded = sum(int(c.get("runs", 0)) for c in cells)
    completed = sum(int(c.get("completed", 0)) for c in cells)
    if recorded and completed == recorded >= planned:
        badge, word = "ok", "all completed"
    elif recorded < planned:
        badge, word = "warn", "unfinished"
    else:
        badge, word = "warn", f"{recorded - completed} not completed"
    axes = ", ".join(str(a) for a in summary.get("axes", [])) or "none"
    meta = [
        ("cells", esc(len(cells))),
        ("repetitions", esc(repetitions)),
        ("runs recorded", f"{recorded} of {planned}"),
        (
            "completed",
            f'<span class="{"yes" if completed == planned else "no"}">{completed}</span>',
        ),
        ("matrix", f"<code>{esc(axes)}</code>"),
        ("sweep file", esc(summary.get("sweep_file", "—"))),
    ]
    banner = ""
    incomplete = [c for c in cells if int(c.get("completed", 0)) < int(c.get("runs", 0))]
    if incomplete:
        names = "; ".join(f"{c.get('label')}: {outcomes_text(c)}" for c in incomplete)
        banner = (
            f'<div class="banner" id="incomplete-banner" role="alert">{len(incomplete)} of '
            f"{len(cells)} cells have runs that did not complete — <b>{esc(names)}</b>. Their "
            "statistics cover only the completed runs.</div>"
        )
    return (
        '<header id="header"><div class="title">'
        f"<h1>sweep {esc(summary.get('name', ''))}</h1>"
        f'<span class="badge outcome {badge}">{esc(word)}</span></div><div class="meta">'
        + "".join(f'<span><span class="muted">{k}</span> <b>{v}</b></span>' for k, v in meta)
        + f"</div></header>{banner}"
    )


def render_comparison_html(summary: Mapping[str, Any]) -> str:
    """The whole page as a string (plotly.js inlined once)."""
    cells = [c for c in summary.get("cells", []) if isinstance(c, dict)]
    charts = "".join(chart_section(chart, cells) for chart in CHARTS)
    body = (
        _header(summary, cells)
        + f'<div class="charts">{charts}</div>'
        + _stats_table(summary, cells)
        + _runs_table(cells)
    )
    plotly_js = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>vmigrate · sweep {esc(summary.get('name', ''))}</title>"
        f"<style>{CSS}{EXTRA_CSS}</style>"
        f"<script>{plotly_js}</script><script>{AXIS_JS}</script>"
        f"</head><body><main>{body}"
        "<footer>vmigrate sweep comparison · figures from summary.json (statistics of sweep.db)"
        "</footer></main></body></html>\n"
    )


def render_comparison(sweep_dir: Path) -> Path:
    """Write SWEEP_DIR/comparison.html from SWEEP_DIR/summary.json; return its path."""
    source = sweep_dir / SUMMARY_FILE
    try:
        summary = json.loads(source.read_text())
    except FileNotFoundError:
        raise UsageError(f"{sweep_dir}: no {SUMMARY_FILE}; run `vmigrate sweep` first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{source}: cannot read: {exc}") from None
    page = render_comparison_html(summary)
    path = sweep_dir / COMPARISON_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
