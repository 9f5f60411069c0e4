"""The statistics vmigrate's figures use, in one place: nearest-rank percentiles (latency, as
HdrHistogram reports them), the median of what was measured, and the summary of a cell's
repetitions (mean, median, stdev and a Student-t 95 % interval)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


def nearest_rank(values: npt.NDArray[np.float64], percentile: float) -> float:
    """The nearest-rank percentile of `values` (the value at rank ceil(p·N); NaN when empty)."""
    if len(values) == 0:
        return float("nan")
    ordered = np.sort(values)
    rank = int(np.ceil(percentile / 100.0 * len(ordered)))
    return float(ordered[max(rank, 1) - 1])


def median_or_none(values: Sequence[float]) -> float | None:
    """The median of `values` (the mean of the middle two for an even count); None when empty."""
    return statistics.median(values) if values else None


# Student t: the 0.975 quantile for 1..30 degrees of freedom (two-sided 95 %).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (no scipy needed).

    Exact table up to 30; beyond, the Cornish-Fisher expansion around the normal quantile,
    within 1e-5 of the true value there."""
    if df < 1:
        raise ValueError("degrees of freedom must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z, n = _Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * n)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * n**4)
    )


@dataclass(frozen=True)
class Stats:
    """n, mean, median, sample stdev and the 95 % CI of the mean (None where undefined)."""

    n: int
    mean: float | None
    median: float | None
    stdev: float | None
    ci95_low: float | None
    ci95_high: float | None

    @property
    def ci95_half(self) -> float | None:
        if self.ci95_high is None or self.mean is None:
            return None
        return self.ci95_high - self.mean

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": self.mean,
            "median": self.median,
            "stdev": self.stdev,
            "ci95_low": self.ci95_low,
            "ci95_high": self.ci95_high,
            "ci95_half": self.ci95_half,
        }


def describe(values: Iterable[float | None]) -> Stats:
    """Statistics of the finite values; None and NaN (missing figures) are ignored."""
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not data:
        return Stats(0, None, None, None, None, None)
    mean = statistics.fmean(data)
    median = statistics.median(data)
    if len(data) < 2:
        return Stats(1, mean, median, None, None, None)
    stdev = statistics.stdev(data)
    half = t_quantile_975(len(data) - 1) * stdev / math.sqrt(len(data))
    return Stats(len(data), mean, median, stdev, mean - half, mean + half)
