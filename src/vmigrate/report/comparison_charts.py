"""The charts of a sweep's comparison page (report/comparison.py): which figures, and how each
is drawn: grouped bars of the mean with 95 % confidence intervals per cell, a dot per completed
run, a red note where a cell has none, and a linear/log switch on the y axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from vmigrate.report.html.formatting import esc, num, obj
from vmigrate.report.html.style import HOST_COLOURS

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

# switches a chart's y axis between linear and log, and marks the pressed button
AXIS_JS = """
function vmigrateAxis(button, id, type) {
  Plotly.relayout(id, {"yaxis.type": type});
  for (const b of button.parentNode.querySelectorAll("button")) {
    b.classList.toggle("on", b === button);
  }
}
"""


def outcomes_text(cell: Mapping[str, Any], skip_completed: bool = True) -> str:
    """A cell's runs per outcome ("2 failed, 1 cancelled"), by default without the completed."""
    return ", ".join(
        f"{n} {outcome}"
        for outcome, n in obj(cell.get("outcomes")).items()
        if not (skip_completed and outcome == "completed")
    )


def _tick(label: str) -> str:
    """A cell's label as an axis tick: one line per matrix entry, a table's extras below."""
    return esc(label).replace(" · ", "<br>").replace(" (", "<br>(")


def _chart(chart: _Chart, cells: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Bars (mean) with 95 % CI error bars, one group per cell, one bar per series; a dot per
    completed run; a red note where a cell has no completed run."""
    fig = go.Figure()
    ticks = [_tick(str(c.get("label", c.get("cell_id")))) for c in cells]
    for series in chart.series:
        fig.add_trace(_bars(chart, series, ticks, cells))
        fig.add_trace(_run_dots(chart, series, ticks, cells))
    _note_incomplete(fig, ticks, cells)
    _style(fig, chart, ticks)
    return fig


def _bar_values(
    series: _Series, cells: Sequence[Mapping[str, Any]], scale: float
) -> tuple[list[float | None], list[float | None], list[float | None], list[list[Any]]]:
    """Per cell, scaled: the series' mean, its CI above and below the mean, the hover figures."""
    means: list[float | None] = []
    plus: list[float | None] = []
    minus: list[float | None] = []
    hover: list[list[Any]] = []
    for cell in cells:
        stats = obj(obj(cell.get("figures")).get(series.key))
        mean, low, high = (num(stats.get(k)) for k in ("mean", "ci95_low", "ci95_high"))
        means.append(None if mean is None else mean / scale)
        plus.append(None if high is None or mean is None else (high - mean) / scale)
        minus.append(None if low is None or mean is None else (mean - low) / scale)
        hover.append(
            [
                stats.get("n", 0),
                _hover_num(stats.get("median"), scale),
                _hover_num(stats.get("stdev"), scale),
                _hover_num(low, scale),
                _hover_num(high, scale),
                esc(cell.get("cell_id", "")),
            ]
        )
    return means, plus, minus, hover


def _bars(
    chart: _Chart, series: _Series, ticks: list[str], cells: Sequence[Mapping[str, Any]]
) -> go.Bar:
    """One series' bars: the mean per cell with its 95 % CI as whiskers, figures on hover."""
    means, plus, minus, hover = _bar_values(series, cells, chart.scale)
    return go.Bar(
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
            f"<b>{esc(series.name)}</b><br>mean %{{y:.4g}} {esc(chart.axis)}<br>"
            "95 % CI %{customdata[3]} to %{customdata[4]}<br>median %{customdata[1]} · "
            "stdev %{customdata[2]} · n %{customdata[0]}<br>"
            "<span style='font-size:10px'>%{customdata[5]}</span><extra></extra>"
        ),
    )


def _run_dots(
    chart: _Chart, series: _Series, ticks: list[str], cells: Sequence[Mapping[str, Any]]
) -> go.Scatter:
    """One series' completed runs as dots over their cell's bar: the spread behind the mean."""
    dots_x: list[str] = []
    dots_y: list[float] = []
    dots_text: list[str] = []
    for tick, cell in zip(ticks, cells, strict=True):
        for run in cell.get("run_list", []):
            value = num(obj(obj(run).get("figures")).get(series.key))
            if run.get("outcome") == "completed" and value is not None:
                dots_x.append(tick)
                dots_y.append(value / chart.scale)
                dots_text.append(f"{esc(run.get('run_id'))}")
    return go.Scatter(
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
        hovertemplate="%{text}<br>%{y:.4g} " + esc(chart.axis) + "<extra></extra>",
    )


def _note_incomplete(fig: go.Figure, ticks: list[str], cells: Sequence[Mapping[str, Any]]) -> None:
    """A red note, up the axis, on every cell without a completed run: an empty slot says why."""
    for tick, cell in zip(ticks, cells, strict=True):
        if not cell.get("completed"):
            why = outcomes_text(cell) or "no runs yet"
            fig.add_annotation(
                x=tick,
                yref="y domain",  # not data: an annotation in data units would stretch the axis
                y=0.02,
                yanchor="bottom",
                textangle=-90,
                showarrow=False,
                text=f"no completed run: {esc(why)}",
                font={"size": 11, "color": "#d1242f"},
            )


def _style(fig: go.Figure, chart: _Chart, ticks: list[str]) -> None:
    """Layout and axes shared by every chart, so they read alike; cells in the matrix's order."""
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


def _hover_num(value: Any, scale: float) -> str:
    """A figure for a hover label, in the chart's unit; a dash when there is none."""
    number = num(value)
    return "—" if number is None else f"{number / scale:.4g}"


def chart_section(chart: _Chart, cells: Sequence[Mapping[str, Any]]) -> str:
    """One chart as a page section: its title, a linear/log switch, a note, the figure."""
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
        f'<section id="{chart.ident}"><h2>{esc(chart.title)}{scale}</h2>'
        f'<div class="legend-note">{esc(chart.note)}; bars: mean of the completed runs, '
        "whiskers: 95 % confidence interval, dots: single runs</div>"
        f"{fragment}</section>"
    )
