"""The time line of a run: every panel drawn, then decorated with the run's windows and
moments, as an HTML fragment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from vmigrate.report.html.figure import ROW_HEIGHT_PX, ROWS, TimelineFigure
from vmigrate.report.html.formatting import esc
from vmigrate.report.html.panels import (
    cpu_panel,
    dirty_panel,
    disk_panel,
    latency_panel,
    migration_panel,
    network_panel,
    probe_panel,
    rss_panel,
)
from vmigrate.report.html.style import ACTION_LINE, MOMENTS, WINDOW_FILL
from vmigrate.result import Result

Moment = tuple[float, str, str, str]  # t_s, label, colour, dash

PANELS: dict[str, Callable[[TimelineFigure, int], bool]] = {
    "latency": latency_panel,
    "probe": probe_panel,
    "migration": migration_panel,
    "dirty": dirty_panel,
    "cpu": cpu_panel,
    "network": network_panel,
    "disk": disk_panel,
    "rss": rss_panel,
}


def decorate(tl: TimelineFigure, drawn: Sequence[bool]) -> None:
    """Phase bands and moment lines on every panel, per-panel legends, "no data" notes."""
    moments = _moments(tl)
    shapes: list[dict[str, Any]] = []
    for row, (_, _, y_title) in enumerate(ROWS, start=1):
        _decorate_panel(tl, row, y_title, moments, drawn[row - 1], shapes)
    # Added at once: plotly re-validates every shape the figure has on each add_shape, which
    # made the bands and lines (dozens) most of a report's rendering time.
    tl.fig.update_layout(shapes=[*tl.fig.layout.shapes, *shapes])
    _label_windows(tl)
    _style(tl)


def _moments(tl: TimelineFigure) -> list[Moment]:
    """The vertical lines: the migration's moments and what the orchestrator did."""
    start, phases = tl.migration_start(), tl.result.phases
    return [
        (at + start, label, colour, dash)
        for key, label, colour, dash in MOMENTS
        if start is not None and (at := getattr(phases, key)) is not None
    ] + [(a.t_s, a.action, *ACTION_LINE) for a in tl.result.migration.actions]


def _decorate_panel(
    tl: TimelineFigure,
    row: int,
    y_title: str,
    moments: Sequence[Moment],
    drew: bool,
    shapes: list[dict[str, Any]],
) -> None:
    """One panel's window bands and moment lines (appended to `shapes`), legend and y title;
    a "no data" note if empty."""
    shapes += _window_bands(tl, row) + _moment_lines(tl, row, moments)
    _place_legend(tl, row)
    tl.fig.update_yaxes(
        title_text=y_title, title_font={"size": 11}, row=row, col=1, secondary_y=False
    )
    if not drew:
        _mark_empty(tl, row)


def _window_bands(tl: TimelineFigure, row: int) -> list[dict[str, Any]]:
    """A band per window (baseline, during, after) behind the panel's traces."""
    xref, yref = tl.refs(row)
    return [
        {
            "type": "rect",
            "xref": xref,
            "yref": f"{yref} domain",
            "x0": a,
            "x1": b,
            "y0": 0,
            "y1": 1,
            "fillcolor": WINDOW_FILL.get(name, ("rgba(110,119,129,0.08)", ""))[0],
            "line": {"width": 0},
            "layer": "below",
        }
        for name, (a, b) in tl.windows.items()
    ]


def _moment_lines(tl: TimelineFigure, row: int, moments: Sequence[Moment]) -> list[dict[str, Any]]:
    """A vertical line per moment across the panel, so every panel shares the same marks."""
    xref, yref = tl.refs(row)
    return [
        {
            "type": "line",
            "xref": xref,
            "yref": f"{yref} domain",
            "x0": t,
            "x1": t,
            "y0": 0,
            "y1": 1,
            "line": {"color": colour, "dash": dash, "width": 1.3},
            "layer": "above",
        }
        for t, _, colour, dash in moments
    ]


def _place_legend(tl: TimelineFigure, row: int) -> None:
    """The panel's own legend, right of it and level with its top, so each explains its row."""
    hi = tl.domain(row)[1]
    tl.fig.update_layout(
        {
            "legend" if row == 1 else f"legend{row}": {
                "y": hi,
                "yanchor": "top",
                "x": 1.01,
                "xanchor": "left",
                "font": {"size": 11},
                "bgcolor": "rgba(255,255,255,0)",
                "tracegroupgap": 0,
                "itemwidth": 30,
            }
        }
    )


def _mark_empty(tl: TimelineFigure, row: int) -> None:
    """Say "no data" on a panel nothing was drawn on, and keep its row laid out."""
    xref, yref = tl.refs(row)
    # plotly.js lays out only the subplots some trace uses: give it an invisible one
    lo_x, hi_x = tl.x_range or (0.0, 1.0)
    tl.add(
        row,
        go.Scatter(x=[lo_x, hi_x], y=[0, 1], mode="none", showlegend=False, hoverinfo="skip"),
    )
    tl.fig.add_annotation(
        xref=f"{xref} domain",
        yref=f"{yref} domain",
        x=0.5,
        y=0.5,
        showarrow=False,
        text="no data",
        font={"size": 16, "color": "#8c959f"},
    )
    tl.fig.update_yaxes(showticklabels=False, row=row, col=1)


def _label_windows(tl: TimelineFigure) -> None:
    """The window names inside the top panel."""
    xref, yref = tl.refs(1)
    for name, (a, b) in tl.windows.items():
        tl.fig.add_annotation(
            xref=xref,
            yref=f"{yref} domain",
            x=(a + b) / 2,
            y=1.0,
            yanchor="top",
            showarrow=False,
            text=f"<b>{esc(name)}</b>",
            font={"size": 11, "color": "#57606a"},
        )


def _style(tl: TimelineFigure) -> None:
    """Axes, spikes, panel titles and the page-wide layout."""
    tl.fig.update_xaxes(
        showticklabels=True,
        ticks="outside",
        ticklen=3,
        showspikes=True,
        spikemode="across",
        spikesnap="cursor",
        spikethickness=1,
        spikecolor="#8c959f",
        spikedash="solid",
        gridcolor="#eaeef2",
        zeroline=False,
    )
    if tl.x_range:
        tl.fig.update_xaxes(range=list(tl.x_range), autorange=False)
    tl.fig.update_xaxes(title_text="seconds since the run started", row=len(ROWS), col=1)
    tl.fig.update_yaxes(gridcolor="#eaeef2", zeroline=False)
    for annotation in tl.fig.layout.annotations[: len(ROWS)]:  # the panel titles
        annotation.update(x=0, xanchor="left", font={"size": 13, "color": "#1f2328"})
    tl.fig.update_layout(
        template="plotly_white",
        height=ROW_HEIGHT_PX * len(ROWS) + 120,
        margin={"l": 70, "r": 40, "t": 40, "b": 60},
        font={
            "family": 'system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif',
            "size": 12,
        },
        hovermode="closest",
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="#ffffff",
        uirevision="timeline",
    )


def build(tl: TimelineFigure) -> Any:
    """Every panel (a failing one says why instead of breaking the report), decorated."""
    drawn = []
    for row, (key, _, _) in enumerate(ROWS, start=1):
        try:
            drawn.append(PANELS[key](tl, row))
        except (ValueError, KeyError, IndexError, TypeError) as exc:  # a malformed series
            drawn.append(False)
            xref, yref = tl.refs(row)
            tl.fig.add_annotation(
                xref=f"{xref} domain",
                yref=f"{yref} domain",
                x=0.5,
                y=0.2,
                showarrow=False,
                text=f"could not draw: {esc(exc)}",
                font={"size": 11, "color": "#a40e26"},
            )
    decorate(tl, drawn)
    return tl.fig


def timeline_html(run_dir: Path, result: Result) -> str:
    """The time-line figure as an HTML fragment (plotly.js itself not included)."""
    figure = build(TimelineFigure(run_dir, result))
    fragment: str = pio.to_html(
        figure,
        include_plotlyjs=False,
        full_html=False,
        div_id="timeline-plot",
        default_width="100%",
        default_height=f"{ROW_HEIGHT_PX * len(ROWS) + 120}px",
        config={
            "displaylogo": False,
            "responsive": True,
            "scrollZoom": False,
            "toImageButtonOptions": {"filename": "vmigrate-timeline"},
        },
        validate=True,
    )
    return fragment
