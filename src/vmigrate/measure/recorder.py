"""The run's time-series store: one CSV per series in RUN/series/, documented in docs/series.md.

Every row of every series starts with `t_ns`, a CLOCK_MONOTONIC timestamp in nanoseconds (the
same clock in every namespace and process of the testbed), except the probe and request
records, which carry their own monotonic send/receive times. Writers buffer rows and append
them in batches, so sampling costs little; `load_series` reads a series back as columns.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

SERIES_DIR = "series"
Row = Sequence[object]


class SeriesWriter:
    """Appends rows to one CSV series; thread-safe; flushes every `batch` rows and on close."""

    def __init__(self, path: Path, columns: Sequence[str], batch: int = 256) -> None:
        self.path = path
        self.columns = list(columns)
        self._rows: list[Row] = []
        self._batch = batch
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerow(self.columns)

    def append(self, row: Row) -> None:
        if len(row) != len(self.columns):
            raise ValueError(
                f"{self.path.name}: row has {len(row)} fields, not {len(self.columns)}"
            )
        with self._lock:
            self._rows.append(row)
            if len(self._rows) >= self._batch:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._rows:
            return
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerows(self._rows)
        self._rows = []


class Recorder:
    """All series of one run, under RUN/series/."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / SERIES_DIR
        self._writers: dict[str, SeriesWriter] = {}

    def series(self, name: str, columns: Sequence[str]) -> SeriesWriter:
        """The writer of series `name` (created with its header on first use)."""
        if name not in self._writers:
            self._writers[name] = SeriesWriter(self.dir / f"{name}.csv", columns)
        return self._writers[name]

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.csv"

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()


Columns = dict[str, npt.NDArray[np.float64]]
TextColumns = dict[str, list[str]]


def load_series(run_dir: Path, name: str) -> tuple[Columns, TextColumns]:
    """Read RUN/series/NAME.csv: numeric columns as float arrays (empty cell = NaN), the others
    as lists of strings. A missing series reads as empty."""
    path = run_dir / SERIES_DIR / f"{name}.csv"
    if not path.exists():
        return {}, {}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = list(reader)
    numeric: Columns = {}
    text: TextColumns = {}
    for index, column in enumerate(header):
        cells = [row[index] if index < len(row) else "" for row in rows]
        try:
            numeric[column] = np.array([float(c) if c != "" else np.nan for c in cells])
        except ValueError:
            text[column] = cells
    return numeric, text
