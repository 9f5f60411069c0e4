"""RUN/series as arrays for the time line: counters summed onto one grid, rates, rolling
percentiles, and traces thinned to what a browser can draw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vmigrate.measure.recorder import load_series
from vmigrate.report.html.formatting import plain

MAX_POINTS = 20_000  # per trace; above it a trace is thinned, keeping each bucket's extremes
ROLLING_WINDOW_S = 0.5

Array = npt.NDArray[np.float64]


@dataclass
class Series:
    """One series of RUN/series as columns; text columns that happen to be all-empty are read
    as numeric NaN by load_series, so `text()` accepts both."""

    num: dict[str, Array]
    txt: dict[str, list[str]]

    @classmethod
    def load(cls, run_dir: Path, name: str) -> Series:
        numeric, text = load_series(run_dir, name)
        return cls(dict(numeric), dict(text))

    def __len__(self) -> int:
        for column in self.num.values():
            return len(column)
        for values in self.txt.values():
            return len(values)
        return 0

    def col(self, name: str) -> Array | None:
        column = self.num.get(name)
        return None if column is None or len(column) == 0 else column

    def text(self, name: str) -> list[str]:
        if name in self.txt:
            return self.txt[name]
        column = self.num.get(name)
        if column is None:
            return [""] * len(self)
        return ["" if math.isnan(v) else plain(float(v)) for v in column]


def group_rows(keys: Sequence[str]) -> dict[str, npt.NDArray[np.intp]]:
    """Row indices per distinct key, keys in sorted order (deterministic)."""
    if not keys:
        return {}
    unique, inverse = np.unique(np.array(keys, dtype=str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(unique))
    return {
        str(key): part
        for key, part in zip(unique, np.split(order, np.cumsum(counts)[:-1]), strict=True)
    }


def _grid(groups: Sequence[tuple[Array, Array]], step: float) -> Array | None:
    """A common time grid over all groups (at most MAX_POINTS points)."""
    times = [t for t, _ in groups if len(t)]
    if not times:
        return None
    lo = min(float(t[0]) for t in times)
    hi = max(float(t[-1]) for t in times)
    if hi <= lo:
        return None
    step = max(step, (hi - lo) / MAX_POINTS)
    return np.arange(lo, hi + step / 2, step)


def _clean(t: Array, v: Array) -> tuple[Array, Array]:
    """Finite samples only, in time order."""
    keep = np.isfinite(t) & np.isfinite(v)
    t, v = t[keep], v[keep]
    order = np.argsort(t, kind="stable")
    return t[order], v[order]


def summed_rate(groups: Sequence[tuple[Array, Array]], step: float) -> tuple[Array, Array]:
    """Per-second rate of the sum of cumulative counters, each sampled at its own times.

    Every counter is interpolated onto one grid before summing, so processes that appear or
    exit, or are sampled with jitter, add up without steps; a counter that goes backwards (pid
    reused) contributes nothing rather than a negative rate.
    """
    cleaned = [_clean(t, v) for t, v in groups]
    cleaned = [(t, v) for t, v in cleaned if len(t) >= 2]
    grid = _grid(cleaned, step)
    if grid is None:
        return np.array([]), np.array([])
    rate = np.zeros(len(grid) - 1)
    dt = np.diff(grid)
    for t, v in cleaned:
        rate += np.clip(np.diff(np.interp(grid, t, v)), 0, None) / dt
    return grid[1:], rate


def summed_level(groups: Sequence[tuple[Array, Array]], step: float) -> tuple[Array, Array]:
    """Sum of gauges (e.g. RSS) on one grid; NaN where none of them was alive."""
    cleaned = [_clean(t, v) for t, v in groups]
    cleaned = [(t, v) for t, v in cleaned if len(t) >= 1]
    grid = _grid(cleaned, step)
    if grid is None:
        return np.array([]), np.array([])
    total = np.zeros(len(grid))
    alive = np.zeros(len(grid), dtype=bool)
    for t, v in cleaned:
        inside = (grid >= t[0]) & (grid <= t[-1])
        total[inside] += np.interp(grid[inside], t, v)
        alive |= inside
    return grid, np.where(alive, total, np.nan)


def downsample(
    x: Array, y: Array, limit: int = MAX_POINTS, body: bool = False
) -> tuple[Array, Array]:
    """At most `limit` points of a time-ordered trace: per bucket of consecutive points, its
    minimum and its maximum (so spikes and dips survive); with `body`, also two points from
    inside each bucket, so a scatter still shows where most values lie, not just the envelope."""
    n = len(x)
    if n <= limit:
        return x, y
    buckets = max(1, limit // (4 if body else 2))
    size = -(-n // buckets)
    padded = np.concatenate([y, np.full(buckets * size - n, np.nan)]).reshape(buckets, size)
    nan = np.isnan(padded)
    low = np.where(nan, np.inf, padded).argmin(axis=1)
    high = np.where(nan, -np.inf, padded).argmax(axis=1)
    base = np.arange(buckets) * size
    picks = [base + low, base + high]
    if body:
        picks += [base + size // 3, base + (2 * size) // 3]
    index = np.unique(np.concatenate(picks))
    index = index[index < n]
    return x[index], y[index]


def thin_marks(x: Array, limit: int = MAX_POINTS) -> Array:
    """At most ~`limit` marker positions: one per distinct pixel-sized slot of the time axis."""
    if len(x) <= limit:
        return x
    span = float(np.nanmax(x) - np.nanmin(x)) or 1.0
    slots = np.floor((x - np.nanmin(x)) / (span / limit))
    _, first = np.unique(slots, return_index=True)
    return x[np.sort(first)]


def rolling_percentiles(
    t: Array, v: Array, percentiles: Sequence[float], window_s: float = ROLLING_WINDOW_S
) -> tuple[Array, list[Array], float]:
    """Percentiles of `v` in a window sliding along `t` (NaN where it is empty), and the window
    used: `window_s`, widened on long runs so that at most ~2000 windows still cover every
    point."""
    t, v = _clean(t, v)
    if len(t) == 0:
        return np.array([]), [np.array([]) for _ in percentiles], window_s
    span = float(t[-1] - t[0])
    step = max(window_s / 5, span / 2000)
    window_s = max(window_s, step)
    centres = np.arange(t[0], t[-1] + step / 2, step)
    lo = np.searchsorted(t, centres - window_s / 2, side="left")
    hi = np.searchsorted(t, centres + window_s / 2, side="right")
    out = np.full((len(percentiles), len(centres)), np.nan)
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        if b > a:
            out[:, i] = np.percentile(v[a:b], percentiles)
    return centres, [out[i] for i in range(len(percentiles))], window_s
