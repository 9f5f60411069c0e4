"""The model's error, as tables: per run set, the median |error| on total time, bytes and
downtime with the plain physics and with the fitted constants — for all its runs, and for each
strategy's when it mixes them (a median over all can hide one strategy behind the other)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from vmigrate.migration.calibration import Observation
from vmigrate.migration.estimate import ModelConstants
from vmigrate.stats import median_or_none


def median_errors(
    observations: Sequence[Observation], constants: ModelConstants
) -> tuple[float | None, float | None, float | None, int]:
    """Median |error| on total time (%), bytes (%) and downtime (ms), and how many runs the
    model could predict at all."""
    times, sizes, pauses = [], [], []
    for obs in observations:
        est = obs.predict(constants)
        if est.total_time_s is None or est.transferred_bytes is None or est.downtime_ms is None:
            continue
        times.append(abs(est.total_time_s - obs.total_time_s) / obs.total_time_s * 100)
        sizes.append(
            abs(est.transferred_bytes - obs.transferred_bytes) / obs.transferred_bytes * 100
        )
        pauses.append(abs(est.downtime_ms - obs.downtime_ms))
    return median_or_none(times), median_or_none(sizes), median_or_none(pauses), len(times)


STRATEGY_NAMES = {"precopy": "pre-copy", "postcopy": "post-copy"}


def by_strategy(
    sets: Sequence[tuple[str, Sequence[Observation]]],
) -> list[tuple[str, Sequence[Observation]]]:
    """Each run set, followed by its runs of each strategy when it holds more than one."""
    split: list[tuple[str, Sequence[Observation]]] = []
    for name, observations in sets:
        split.append((name, observations))
        models = sorted({o.model for o in observations})
        if len(models) > 1:
            for model in models:
                label = STRATEGY_NAMES.get(model, model)
                split.append((f"{name}, {label}", [o for o in observations if o.model == model]))
    return split


def error_table(
    title: str,
    sets: Sequence[tuple[str, Sequence[Observation]]],
    models: Sequence[tuple[str, ModelConstants]],
) -> Table:
    """One row per (run set, model): its median errors."""
    table = Table(title=title)
    for column in (
        "runs",
        "model",
        "predicted",
        "time |err| %",
        "bytes |err| %",
        "downtime |err| ms",
    ):
        table.add_column(column, justify="left" if column in ("runs", "model") else "right")
    for name, observations in sets:
        for label, constants in models:
            time, size, pause, predicted = median_errors(observations, constants)
            table.add_row(
                f"{name} ({len(observations)})", label, str(predicted),
                *("—" if v is None else f"{v:.1f}" for v in (time, size, pause)),
            )  # fmt: skip
    return table
