"""Measurement windows and the arithmetic every figure shares: cumulative counters turned into
per-window totals, rates and "extra over baseline".

Windows (ns, CLOCK_MONOTONIC): baseline [baseline_start, migration_start), during
[migration_start, migration_end], after (migration_end, after_end]. A run that waited for its
turn to migrate (a drain's VM) marks baseline_end too: its baseline is the common one,
[baseline_start, baseline_end), not the wait (others' migrations). A counter's total over a
window uses the samples at or just outside its edges, so the window is rounded outward to the
sampling points: a total never misses what happened inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vmigrate.result.base import WindowFigures

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
WINDOW_NAMES = ("baseline", "during", "after")


@dataclass(frozen=True)
class Windows:
    """The three windows of a run, from its timeline marks (all ns)."""

    t0_ns: int
    baseline: tuple[int, int]
    during: tuple[int, int]
    after: tuple[int, int]

    @classmethod
    def from_marks(cls, t0_ns: int, timeline_s: dict[str, float]) -> Windows:
        """From result.json's timeline_s (seconds since t0); missing marks give empty windows."""

        def at(name: str, default: float) -> int:
            return t0_ns + round(timeline_s.get(name, default) * 1e9)

        start = at("baseline_start", 0.0)
        mig_start = at("migration_start", timeline_s.get("baseline_start", 0.0))
        mig_end = at("migration_end", timeline_s.get("migration_start", 0.0))
        end = at("after_end", timeline_s.get("migration_end", 0.0))
        baseline_end = mig_start
        if "baseline_end" in timeline_s:  # a run that waited its turn: the common baseline
            baseline_end = min(at("baseline_end", 0.0), mig_start)
        return cls(t0_ns, (start, baseline_end), (mig_start, mig_end), (mig_end, end))

    def get(self, name: str) -> tuple[int, int]:
        window: tuple[int, int] = getattr(self, name)
        return window

    def duration_s(self, name: str) -> float:
        start, end = self.get(name)
        return max(0.0, (end - start) / 1e9)

    def as_seconds(self) -> dict[str, tuple[float, float]]:
        """{window: (start_s, end_s)} since t0, for result.json."""
        return {
            name: (round((a - self.t0_ns) / 1e9, 6), round((b - self.t0_ns) / 1e9, 6))
            for name in WINDOW_NAMES
            for a, b in [self.get(name)]
        }


def value_before(t: Array, v: Array, at_ns: float) -> float:
    """The counter's value at the last sample at or before `at_ns` (0 if none: not started)."""
    index = int(np.searchsorted(t, at_ns, side="right")) - 1
    return float(v[index]) if index >= 0 else 0.0


def value_after(t: Array, v: Array, at_ns: float) -> float:
    """The counter's value at the first sample at or after `at_ns` (the last one if none)."""
    if len(t) == 0:
        return 0.0
    index = min(int(np.searchsorted(t, at_ns, side="left")), len(t) - 1)
    return float(v[index])


def counter_delta(t: Array, v: Array, window: tuple[int, int]) -> float:
    """How much a cumulative counter grew over a window (edges rounded outward)."""
    if len(t) == 0:
        return 0.0
    return value_after(t, v, window[1]) - value_before(t, v, window[0])


def window_figures(
    total_during: float, total_baseline: float, windows: Windows, digits: int = 3
) -> WindowFigures:
    """{during, extra}: extra = during minus the baseline rate over the same duration."""
    base_s = windows.duration_s("baseline")
    rate = total_baseline / base_s if base_s > 0 else 0.0
    extra = total_during - rate * windows.duration_s("during")
    return WindowFigures(during=round(total_during, digits), extra=round(extra, digits))


def finite_or_none(value: float | None, digits: int = 3) -> float | None:
    """A JSON-safe number: None for missing, NaN or infinite values."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)
