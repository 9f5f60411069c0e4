"""The time line's figure: one plotly panel per row on a shared time axis, the run's windows
and host colours, and the helpers the panels draw with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vmigrate.report.html.formatting import esc
from vmigrate.report.html.series import Array, Series, downsample, group_rows
from vmigrate.report.html.style import HOST_COLOURS, SPARE_COLOURS
from vmigrate.result import Result

ROWS = (  # key, panel title, y axis title
    ("latency", "Request latency — each request, rolling p50/p99, failures", "ms (log)"),
    ("probe", "Probe — round trip and gap between replies, lost probes", "ms (log)"),
    ("migration", "Migration — throughput and what is left to send", "Mbit/s"),
    ("dirty", "Dirty rate — guest memory written per second (reported by QEMU)", "MiB/s"),
    ("cpu", "CPU — per host (solid) and QEMU threads by class (dashed)", "% of a core"),
    ("network", "Network — host uplinks, sent (solid) and received (dotted)", "Mbit/s"),
    ("disk", "Disk — block IO per host, read (solid) and written (dashed)", "MiB/s"),
    ("rss", "Memory — QEMU resident set", "MiB"),
)
ROW_HEIGHT_PX = 250


@dataclass
class TimelineFigure:
    """The stacked time-line figure as it is built, and what the panels draw with: the series
    (read once), seconds since the run started, one colour per host, traces and axes."""

    run_dir: Path
    result: Result
    fig: Any = None
    t0_ns: float = 0.0
    sample_s: float = 0.2
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    host_colour: dict[str, str] = field(default_factory=dict)
    x_range: tuple[float, float] | None = None
    cache: dict[str, Series] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t0_ns = float(self.result.clock.t0_ns)
        interval = self.result.resources.sample_interval_ms
        self.sample_s = interval / 1000 if interval else 0.2
        self.windows.update(self.result.phases.windows_s)
        if self.windows:
            lo = min(a for a, _ in self.windows.values())
            hi = max(b for _, b in self.windows.values())
            pad = max((hi - lo) * 0.02, 0.1)
            self.x_range = (lo - pad, hi + pad)
        self.fig = make_subplots(
            rows=len(ROWS),
            cols=1,
            shared_xaxes=True,
            vertical_spacing=0.022,
            subplot_titles=[title for _, title, _ in ROWS],
            specs=[[{"secondary_y": key == "migration"}] for key, _, _ in ROWS],
        )

    def series(self, name: str) -> Series:
        """RUN/series/NAME.csv, read once per report."""
        if name not in self.cache:
            self.cache[name] = Series.load(self.run_dir, name)
        return self.cache[name]

    def seconds(self, t_ns: Array) -> Array:
        """Monotonic ns → seconds since the run started."""
        return np.asarray((t_ns - self.t0_ns) / 1e9, dtype=np.float64)

    def colour(self, host: str) -> str:
        """One colour per host in every panel."""
        if host not in self.host_colour:
            self.host_colour[host] = HOST_COLOURS.get(
                host, SPARE_COLOURS[len(self.host_colour) % len(SPARE_COLOURS)]
            )
        return self.host_colour[host]

    def migration_start(self) -> float | None:
        """The origin of phases.* (seconds since the run started)."""
        if "during" in self.windows:
            return self.windows["during"][0]
        return self.result.timeline_s.get("migration_start")

    def add(self, row: int, trace: Any, secondary: bool = False) -> None:
        """Add a trace to a panel, listed in that panel's own legend."""
        trace.update(legend="legend" if row == 1 else f"legend{row}")
        self.fig.add_trace(trace, row=row, col=1, secondary_y=secondary)

    def line(
        self,
        row: int,
        x: Array,
        y: Array,
        name: str,
        colour: str,
        dash: str = "solid",
        secondary: bool = False,
        unit: str = "",
        width: float = 1.6,
        gl: bool = False,
    ) -> None:
        """A line trace; `gl` puts it in the WebGL layer, above WebGL points drawn before it."""
        x, y = downsample(x, y)
        self.add(
            row,
            (go.Scattergl if gl else go.Scatter)(
                x=x,
                y=y.astype(np.float32),
                name=name,
                mode="lines",
                line={"color": colour, "dash": dash, "width": width},
                hovertemplate=f"%{{y:.4g}} {unit}<br>t %{{x:.3f}} s<extra>{esc(name)}</extra>",
            ),
            secondary,
        )

    def per_host(
        self, name: str, value: str, key_columns: Sequence[str]
    ) -> dict[str, list[tuple[Array, Array]]]:
        """The (t_s, value) of every counter in series `name`, grouped by host."""
        series = self.series(name)
        t_ns, values = series.col("t_ns"), series.col(value)
        if t_ns is None or values is None:
            return {}
        hosts = series.text("host")
        keys = [
            "\x00".join(parts)
            for parts in zip(hosts, *(series.text(k) for k in key_columns), strict=True)
        ]
        t = self.seconds(t_ns)
        out: dict[str, list[tuple[Array, Array]]] = {}
        for key, index in group_rows(keys).items():
            out.setdefault(key.split("\x00", 1)[0], []).append((t[index], values[index]))
        return out

    @staticmethod
    def host_order(host: str) -> tuple[int, str]:
        """Sort key: the known hosts in their usual order, then the others by name."""
        order = list(HOST_COLOURS)
        return (order.index(host) if host in order else len(order), host)

    def refs(self, row: int) -> tuple[str, str]:
        """The x and (primary) y axis references of a panel, e.g. ("x3", "y4")."""
        subplot = self.fig.get_subplot(row, 1)
        x = subplot.xaxis.plotly_name.replace("xaxis", "x")
        y = subplot.yaxis.plotly_name.replace("yaxis", "y")
        return x, y

    def domain(self, row: int) -> tuple[float, float]:
        """The vertical extent of a panel, as fractions of the figure's height."""
        subplot = self.fig.get_subplot(row, 1)
        lo, hi = subplot.yaxis.domain
        return float(lo), float(hi)
