"""The comparison page of a sweep: SWEEP_DIR/comparison.html, one self-contained file.

Grouped bars with 95 % confidence intervals per cell (total migration time, observed vs
reported downtime, p99 latency during the migration, migration CPU per host, bytes transferred),
each completed run drawn as a dot over its bar, then a table of every cell's statistics and
outcomes and one of every run. It reads only SWEEP_DIR/summary.json (written by the sweep from
sweep.db), looks like the run report (report/html/) and inlines plotly.js once, so it works
offline. Cells whose runs did not all complete say so in red.
"""

from __future__ import annotations

import html
import json
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from vmigrate.errors import UsageError
from vmigrate.report.html.formatting import fmt
from vmigrate.report.html.style import CSS, HOST_COLOURS, OUTCOME_CLASS

COMPARISON_FILE = "comparison.html"
SUMMARY_FILE = "summary.json"
MIB = 1024 * 1024
CHART_HEIGHT_PX = 400
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif'


@dataclass(frozen=True)
class _Series:
    key: str  # dotted figure name in summary.json
    name: str
    colour: str


@dataclass(frozen=True)
class _Chart:
    ident: str
    title: str
    note: str
    axis: str
    scale: float
    series: tuple[_Series, ...]
    log_ok: bool = True  # the figure is never negative: offer a log axis


CHARTS = (
    _Chart(
        "total-time",
        "Total migration time",
        "as the hypervisor reports it; cold: from pause to resume",
        "seconds",
        1.0,
        (_Series("migration.total_time_s", "total time", "#1f6feb"),),
    ),
    _Chart(
        "downtime",
        "Downtime: observed vs reported",
        "observed = longest gap between the client's probe replies; reported = the hypervisor's",
        "milliseconds",
        1.0,
        (
            _Series("service.observed_downtime_ms", "observed (client probe)", "#d1242f"),
            _Series("migration.downtime_reported_ms", "reported (hypervisor)", "#8c959f"),
        ),
    ),
    _Chart(
        "latency",
        "Latency p99 during the migration",
        "HTTP requests, from each request's intended send time",
        "milliseconds",
        1.0,
        (_Series("service.latency_ms.during.p99", "p99 during", "#8250df"),),
    ),
    _Chart(
        "cpu",
        "Migration CPU per host",
        "CPU-seconds of the migration's own work (all but the guest's vCPUs) above what the "
        "baseline rate predicts",
        "CPU-seconds",
        1.0,
        tuple(
            _Series(f"resources.hosts.{host}.migration_cpu_seconds.extra", host, HOST_COLOURS[host])
            for host in ("source", "destination", "storage")
        ),
        log_ok=False,  # extra CPU can be negative (a paused guest uses less than its baseline)
    ),
    _Chart(
        "transferred",
        "Bytes transferred",
        "migration stream, as the hypervisor counts it",
        "MiB",
        MIB,
        (_Series("migration.transferred_bytes", "transferred", "#e8590c"),),
    ),
)

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

# switches a chart's y axis between linear and log, and marks the pressed button
AXIS_JS = """
function vmigrateAxis(button, id, type) {
  Plotly.relayout(id, {"yaxis.type": type});
  for (const b of button.parentNode.querySelectorAll("button")) {
    b.classList.toggle("on", b === button);
  }
}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(float(value)) else None


def _unit_key(key: str) -> str:
    """A name whose suffix gives `fmt` the unit of a dotted figure (`…latency_ms.during.p99`)."""
    if ".cpu_seconds." in key:
        return "cpu_s"
    for part in reversed(key.split(".")):
        for suffix in ("_mbit_s", "_bytes", "_ms", "_s"):
            if part.endswith(suffix):
                return "x" + suffix
    return "x"


def _outcomes_text(cell: Mapping[str, Any], skip_completed: bool = True) -> str:
    return ", ".join(
        f"{n} {outcome}"
        for outcome, n in _d(cell.get("outcomes")).items()
        if not (skip_completed and outcome == "completed")
    )


def _tick(label: str) -> str:
    """A cell's label as an axis tick: one line per matrix entry, a table's extras below."""
    return _esc(label).replace(" · ", "<br>").replace(" (", "<br>(")


def _chart(chart: _Chart, cells: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Bars (mean) with 95 % CI error bars, one group per cell, one bar per series; a dot per
    completed run; a red note where a cell has no completed run."""
    fig = go.Figure()
    ticks = [_tick(str(c.get("label", c.get("cell_id")))) for c in cells]
    for series in chart.series:
        means: list[float | None] = []
        plus: list[float | None] = []
        minus: list[float | None] = []
        hover: list[list[Any]] = []
        dots_x: list[str] = []
        dots_y: list[float] = []
        dots_text: list[str] = []
        for tick, cell in zip(ticks, cells, strict=True):
            stats = _d(_d(cell.get("figures")).get(series.key))
            mean, low, high = (_num(stats.get(k)) for k in ("mean", "ci95_low", "ci95_high"))
            s = chart.scale
            means.append(None if mean is None else mean / s)
            plus.append(None if high is None or mean is None else (high - mean) / s)
            minus.append(None if low is None or mean is None else (mean - low) / s)
            hover.append(
                [
                    stats.get("n", 0),
                    _hover_num(stats.get("median"), s),
                    _hover_num(stats.get("stdev"), s),
                    _hover_num(low, s),
                    _hover_num(high, s),
                    _esc(cell.get("cell_id", "")),
                ]
            )
            for run in cell.get("run_list", []):
                value = _num(_d(_d(run).get("figures")).get(series.key))
                if run.get("outcome") == "completed" and value is not None:
                    dots_x.append(tick)
                    dots_y.append(value / s)
                    dots_text.append(f"{_esc(run.get('run_id'))}")
        fig.add_trace(
            go.Bar(
                x=ticks,
                y=means,
                name=series.name,
                marker={"color": series.colour, "opacity": 0.82},
                offsetgroup=series.key,
                legendgroup=series.key,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": plus,
                    "arrayminus": minus,
                    "color": "#1f2328",
                    "thickness": 1.4,
                    "width": 6,
                },
                customdata=hover,
                hovertemplate=(
                    f"<b>{_esc(series.name)}</b><br>mean %{{y:.4g}} {_esc(chart.axis)}<br>"
                    "95 % CI %{customdata[3]} to %{customdata[4]}<br>median %{customdata[1]} · "
                    "stdev %{customdata[2]} · n %{customdata[0]}<br>"
                    "<span style='font-size:10px'>%{customdata[5]}</span><extra></extra>"
                ),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=dots_x,
                y=dots_y,
                mode="markers",
                name=f"{series.name}: runs",
                showlegend=False,
                legendgroup=series.key,
                offsetgroup=series.key,
                marker={
                    "color": "#ffffff",
                    "size": 6,
                    "line": {"color": "#1f2328", "width": 1},
                },
                text=dots_text,
                hovertemplate="%{text}<br>%{y:.4g} " + _esc(chart.axis) + "<extra></extra>",
            )
        )
    for tick, cell in zip(ticks, cells, strict=True):
        if not cell.get("completed"):
            why = _outcomes_text(cell) or "no runs yet"
            fig.add_annotation(
                x=tick,
                yref="y domain",  # not data: an annotation in data units would stretch the axis
                y=0.02,
                yanchor="bottom",
                textangle=-90,
                showarrow=False,
                text=f"no completed run: {_esc(why)}",
                font={"size": 11, "color": "#d1242f"},
            )
    fig.update_layout(
        template="plotly_white",
        barmode="group",
        scattermode="group",
        height=CHART_HEIGHT_PX,
        margin={"l": 70, "r": 20, "t": 44, "b": 90},
        font={"family": FONT, "size": 12},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        showlegend=len(chart.series) > 1,
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="#ffffff",
        hovermode="closest",
    )
    fig.update_yaxes(
        title_text=chart.axis,
        gridcolor="#eaeef2",
        zeroline=True,
        zerolinecolor="#8c959f",
        rangemode="tozero" if chart.log_ok else "normal",
    )
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=ticks)
    return fig


def _hover_num(value: Any, scale: float) -> str:
    number = _num(value)
    return "—" if number is None else f"{number / scale:.4g}"


def _chart_section(chart: _Chart, cells: Sequence[Mapping[str, Any]]) -> str:
    fragment: str = pio.to_html(
        _chart(chart, cells),
        include_plotlyjs=False,
        full_html=False,
        div_id=f"chart-{chart.ident}",
        default_width="100%",
        default_height=f"{CHART_HEIGHT_PX}px",
        config={
            "displaylogo": False,
            "responsive": True,
            "toImageButtonOptions": {"filename": f"vmigrate-{chart.ident}"},
        },
        validate=True,
    )
    scale = (  # one cell can dwarf the others (a cold migration's downtime): offer a log axis
        f'<span class="scale">y axis <button type="button" onclick="vmigrateAxis(this, '
        f'\'chart-{chart.ident}\', \'linear\')" class="on">linear</button><button type="button" '
        f"onclick=\"vmigrateAxis(this, 'chart-{chart.ident}', 'log')\">log</button></span>"
        if chart.log_ok
        else ""
    )
    return (
        f'<section id="{chart.ident}"><h2>{_esc(chart.title)}{scale}</h2>'
        f'<div class="legend-note">{_esc(chart.note)}; bars: mean of the completed runs, '
        "whiskers: 95 % confidence interval, dots: single runs</div>"
        f"{fragment}</section>"
    )


def _stat_cell(key: str, stats: Mapping[str, Any]) -> str:
    """mean ± CI half-width, and median · stdev · n below it."""
    unit = _unit_key(key)
    mean = _num(stats.get("mean"))
    if mean is None:
        return '<span class="muted">—</span>'
    half = _num(stats.get("ci95_half"))
    ci = f" ± {fmt(unit, half)}" if half is not None else ""
    sub = (
        f"median {fmt(unit, stats.get('median'))} · sd {fmt(unit, stats.get('stdev'))} · "
        f"n {fmt('x', stats.get('n'))}"
    )
    return f'{fmt(unit, mean)}{ci}<span class="extra">{sub}</span>'


def _stats_table(summary: Mapping[str, Any], cells: Sequence[Mapping[str, Any]]) -> str:
    """Every cell: runs completed (red when not all), outcomes, every headline figure."""
    headline = _d(summary.get("headline"))
    header = ["cell", "completed", "outcomes", *headline.values()]
    rows = []
    for cell in cells:
        runs, completed = int(cell.get("runs", 0)), int(cell.get("completed", 0))
        bad = completed < runs or runs == 0
        done = f'<span class="{"bad" if bad else "yes"}">{completed} / {runs}</span>'
        others = _outcomes_text(cell)
        outcomes = f'<span class="bad">{_esc(others)}</span>' if others else _esc("all completed")
        figures = _d(cell.get("figures"))
        rows.append(
            [
                f"<b>{_esc(cell.get('label', ''))}</b>"
                f'<div class="cellid"><code>{_esc(cell.get("cell_id", ""))}</code></div>',
                done,
                outcomes,
                *(_stat_cell(key, _d(figures.get(key))) for key in headline),
            ]
        )
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        '<section id="statistics"><h2>Statistics per cell <span class="muted small">'
        f"{_esc(summary.get('statistics', ''))}</span></h2>"
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
            figures = _d(run.get("figures"))
            link = '<span class="muted">—</span>'
            if run.get("has_report") and run.get("run_dir"):
                href = urllib.parse.quote(f"{run['run_dir']}/report.html")
                link = f'<a href="{_esc(href)}">report</a>'
            rows.append(
                [
                    f"<code>{_esc(run.get('run_id', ''))}</code>",
                    f'<span class="badge {OUTCOME_CLASS.get(outcome, "fail")}">'
                    f"{_esc(outcome)}</span>",
                    _esc(run.get("started_at") or "—"),
                    fmt("x_s", run.get("duration_s")),
                    fmt("x_s", figures.get("migration.total_time_s")),
                    fmt("x_ms", figures.get("service.observed_downtime_ms")),
                    fmt("x_ms", figures.get("migration.downtime_reported_ms")),
                    link,
                    f'<span class="no">{_esc(run["error"])}</span>' if run.get("error") else "",
                ]
            )
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
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
        ("cells", _esc(len(cells))),
        ("repetitions", _esc(repetitions)),
        ("runs recorded", f"{recorded} of {planned}"),
        (
            "completed",
            f'<span class="{"yes" if completed == planned else "no"}">{completed}</span>',
        ),
        ("matrix", f"<code>{_esc(axes)}</code>"),
        ("sweep file", _esc(summary.get("sweep_file", "—"))),
    ]
    banner = ""
    incomplete = [c for c in cells if int(c.get("completed", 0)) < int(c.get("runs", 0))]
    if incomplete:
        names = "; ".join(f"{c.get('label')}: {_outcomes_text(c)}" for c in incomplete)
        banner = (
            f'<div class="banner" id="incomplete-banner" role="alert">{len(incomplete)} of '
            f"{len(cells)} cells have runs that did not complete — <b>{_esc(names)}</b>. Their "
            "statistics cover only the completed runs.</div>"
        )
    return (
        '<header id="header"><div class="title">'
        f"<h1>sweep {_esc(summary.get('name', ''))}</h1>"
        f'<span class="badge outcome {badge}">{_esc(word)}</span></div><div class="meta">'
        + "".join(f'<span><span class="muted">{k}</span> <b>{v}</b></span>' for k, v in meta)
        + f"</div></header>{banner}"
    )


def render_comparison_html(summary: Mapping[str, Any]) -> str:
    """The whole page as a string (plotly.js inlined once)."""
    cells = [c for c in summary.get("cells", []) if isinstance(c, dict)]
    charts = "".join(_chart_section(chart, cells) for chart in CHARTS)
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
        f"<title>vmigrate · sweep {_esc(summary.get('name', ''))}</title>"
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
