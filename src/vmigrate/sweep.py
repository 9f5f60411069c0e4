"""A sweep: a base scenario, a matrix of values, repetitions; on one testbed, resumable.

A SWEEP.toml names a base scenario and a matrix; every combination of matrix values is a *cell*,
every cell runs `repetitions` times, each time in a fresh VM. Every cell's scenario is validated
before the first run, so a typo refuses the whole sweep instead of failing run 17. Each run's
figures land in SWEEP_DIR/sweep.db (SQLite, one row per run, one column per scenario key and per
numeric figure), so a sweep that was interrupted resumes where it stopped and anyone can query
the results with SQL. Per cell, the headline figures get n, mean, median, stdev and a 95 %
Student-t confidence interval (SWEEP_DIR/summary.json), drawn by report/comparison.py.

```toml
name = "strategies"
repetitions = 3
base = "memory.toml"                  # or a [base] table: a scenario, as in `vmigrate run`
[matrix]
"network.bandwidth_mbit" = [100, 1000]           # any scenario key: a list of values
migration = [{ strategy = "precopy" },           # a section: a list of tables, for values
             { strategy = "multifd", multifd_compression = "zstd" }]   # that go together
```
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sqlite3
import statistics
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from vmigrate.config import SECTIONS, Scenario, apply_overrides, scenario_to_dict, validate_scenario
from vmigrate.errors import EnvironmentProblem, ScenarioError, UsageError
from vmigrate.report.comparison import render_comparison

if TYPE_CHECKING:
    from vmigrate.experiment import ExperimentObserver
    from vmigrate.hypervisor.base import MigrationStats
    from vmigrate.migration.preflight import Check
    from vmigrate.testbed.testbed import Testbed

SWEEP_DB = "sweep.db"
SUMMARY_FILE = "summary.json"
RUNS_DIR = "runs"
SUMMARY_VERSION = 1
ERROR_OUTCOME = "error"  # the runner raised: no result.json; retried when the sweep resumes
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MIB = 1024 * 1024
TIMES = "\u00d7"  # multiplication sign

# The figures summarised per cell (dotted paths into result.json) and what people call them.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("migration.total_time_s", "total migration time"),
    ("service.observed_downtime_ms", "downtime observed (probe)"),
    ("migration.downtime_reported_ms", "downtime reported (hypervisor)"),
    ("service.latency_ms.during.p99", "latency p99 during"),
    ("resources.hosts.source.cpu_seconds.extra", "extra CPU, source"),
    ("resources.hosts.destination.cpu_seconds.extra", "extra CPU, destination"),
    ("resources.hosts.storage.cpu_seconds.extra", "extra CPU, storage"),
    ("migration.transferred_bytes", "transferred"),
    ("migration.throughput_mbit_s", "throughput"),
)
# result.json parts that are not figures of the run (the scenario gets its own columns)
_NOT_FIGURES = {"schema_version", "started_at", "scenario", "environment", "files", "clock"}

Runner = Callable[[Scenario, Path], dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# the sweep file


class SweepSpec(BaseModel):
    """SWEEP.toml as written: strict about unknown keys, like a scenario."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1, max_length=64, pattern=NAME_RE.pattern)
    repetitions: int = Field(1, ge=1, le=1000, description="runs per cell")
    base: dict[str, Any] | str = Field(
        default_factory=dict, description="a scenario table, or the path of a scenario file"
    )
    matrix: dict[str, Any] = Field(
        default_factory=dict, description='"section.key" = [values], or section = [tables]'
    )


@dataclass(frozen=True)
class Axis:
    """One matrix entry: a scenario key (or a section) and the settings of each of its values."""

    key: str
    values: tuple[dict[str, Any], ...]  # each: dotted scenario key -> value
    table: bool  # values are tables of a section's keys (`migration = [{...}, ...]`)


@dataclass(frozen=True)
class Cell:
    """One combination of matrix values, with its validated scenario."""

    position: int
    cell_id: str
    label: str
    settings: dict[str, Any]
    scenario: Scenario


@dataclass(frozen=True)
class PlannedRun:
    """One repetition of one cell."""

    cell: Cell
    repetition: int

    @property
    def run_id(self) -> str:
        return f"{self.cell.cell_id},rep={self.repetition}"

    @property
    def dir_name(self) -> str:
        return run_dir_name(self.run_id)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: every cell's scenario checked, ids fixed."""

    name: str
    path: Path
    repetitions: int
    axes: tuple[Axis, ...]
    cells: tuple[Cell, ...]

    def runs(self) -> list[PlannedRun]:
        """Every run, repetition-major: one of each cell, then the second of each, ...

        Interleaving spreads slow drifts of the machine over all cells alike, and an interrupted
        sweep has already measured every cell at least once."""
        return [
            PlannedRun(cell, rep) for rep in range(1, self.repetitions + 1) for cell in self.cells
        ]


def run_dir_name(run_id: str) -> str:
    """A directory name for a run id: `/` and `%` escaped, long ids shortened with a hash."""
    name = run_id.replace("%", "%25").replace("/", "%2F").replace("\0", "")
    if name in ("", ".", ".."):
        name = f"run-{name}"
    if len(name.encode()) > 200:
        digest = hashlib.sha1(run_id.encode()).hexdigest()[:12]
        name = name.encode()[:180].decode(errors="ignore") + "~" + digest
    return name


def format_value(value: Any) -> str:
    """A matrix value as it appears in ids and labels (TOML spelling for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _spec_error(origin: str, exc: ValidationError) -> ScenarioError:
    """The first problem of SWEEP.toml as one line naming the key."""
    first = exc.errors()[0]
    loc = str(first["loc"][0]) if first["loc"] else ""
    kind = first["type"]
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    if kind == "extra_forbidden":
        allowed = ", ".join(SweepSpec.model_fields)
        text = f"{loc}: unknown key {loc!r}; allowed keys in a sweep: {allowed}"
    elif loc == "base":
        text = "base: must be a [base] table (a scenario) or the path of a scenario file"
    elif loc == "matrix":
        text = 'matrix: must be a [matrix] table of "section.key" = [values]'
    else:
        msg = str(first["msg"]).replace("Input should be", "must be")
        text = f"{loc}: {msg} (got {first.get('input')!r})"
    return ScenarioError(f"{origin}: {_one_line(text)}{suffix}")


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such {what} file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ScenarioError(f"{path}: cannot read: {reason}") from None


def _matrix_entries(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`"a.b" = [...]` and `a.b = [...]` (which TOML nests as a table) both give ("a.b", [...])."""
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _matrix_entries(value, dotted)
        else:
            yield dotted, value


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _check_key(origin: str, dotted: str) -> None:
    """Refuse a matrix key that is not a scenario key, naming what is allowed."""
    section, _, key = dotted.partition(".")
    top_level = [k for k in Scenario.model_fields if k not in SECTIONS]
    if not key:
        if section not in top_level:
            raise ScenarioError(
                f"{origin}: matrix key {dotted!r} is not a scenario key; use section.key "
                f"(sections: {', '.join(SECTIONS)}) or one of: {', '.join(top_level)}"
            )
        return
    if section not in SECTIONS:
        raise ScenarioError(
            f"{origin}: matrix key {dotted!r}: unknown section {section!r}; "
            f"sections: {', '.join(SECTIONS)}"
        )
    fields = SECTIONS[section].model_fields
    if key not in fields:
        raise ScenarioError(
            f"{origin}: matrix key {dotted!r}: unknown key {key!r}; allowed keys in "
            f"[{section}]: {', '.join(fields)}"
        )


def _axis(origin: str, dotted: str, values: Any) -> Axis:
    """One matrix entry, checked: a non-empty list of distinct scalars (or of tables)."""
    where = f"{origin}: matrix key {dotted!r}"
    if not isinstance(values, list):
        raise ScenarioError(f"{where}: expected a list of values, e.g. [1, 2] (got {values!r})")
    if not values:
        raise ScenarioError(f"{where}: the list is empty; give at least one value")
    table = dotted in SECTIONS
    settings: list[dict[str, Any]] = []
    for value in values:
        if table:
            if not isinstance(value, dict) or not value:
                raise ScenarioError(
                    f"{where}: a section takes tables of its keys, e.g. "
                    f'{dotted} = [{{ key = "value" }}, ...] (got {value!r})'
                )
            one: dict[str, Any] = {}
            for key, item in value.items():
                # A dotted key sets another section's key in the same cell ("storage.mode").
                full = key if "." in key else f"{dotted}.{key}"
                _check_key(origin, full)
                if not _is_scalar(item):
                    raise ScenarioError(f"{where}: {key} = {item!r} must be a plain value")
                one[full] = item
            settings.append(one)
        else:
            _check_key(origin, dotted)
            if not _is_scalar(value):
                hint = (
                    f"; for several keys together use a section: "
                    f"{dotted.partition('.')[0]} = [{{ ... }}]"
                    if isinstance(value, dict)
                    else ""
                )
                raise ScenarioError(f"{where}: {value!r} is not a plain value{hint}")
            settings.append({dotted: value})
    seen: set[str] = set()
    for one in settings:
        ident = _cell_id(one)
        if ident in seen:
            raise ScenarioError(f"{where}: value {ident!r} is listed twice")
        seen.add(ident)
    return Axis(dotted, tuple(settings), table)


def _cell_id(settings: Mapping[str, Any]) -> str:
    """Stable id of a combination: `key=value` pairs sorted by key, comma-separated."""
    if not settings:
        return "base"
    return ",".join(f"{key}={format_value(settings[key])}" for key in sorted(settings))


def _label(axes: Sequence[Axis], parts: Sequence[dict[str, Any]]) -> str:
    """A short name for charts: the values themselves, keys only where they are needed."""
    if not axes:
        return "base"
    words = []
    for axis, part in zip(axes, parts, strict=True):
        items = [(key.rpartition(".")[2], format_value(v)) for key, v in part.items()]
        if axis.table:
            head, *rest = items
            extra = ", ".join(f"{k}={v}" for k, v in rest)
            words.append(head[1] + (f" ({extra})" if extra else ""))
        elif len(axes) == 1:
            words.append(items[0][1])
        else:
            words.append(f"{items[0][0]}={items[0][1]}")
    return " · ".join(words)


def _apply(data: dict[str, Any], settings: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """A copy of the base scenario data with the cell's settings put in place."""
    merged = copy.deepcopy(data)
    for dotted, value in settings.items():
        section, _, key = dotted.partition(".")
        if not key:
            merged[section] = value
            continue
        node = merged.setdefault(section, {})
        if not isinstance(node, dict):
            raise ScenarioError(f"{origin}: base: {section!r} is a value, not a section")
        node[key] = value
    return merged


def load_sweep(path: Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read and validate SWEEP.toml and every cell's scenario; raise ScenarioError (one line)."""
    origin = str(path)
    raw = _read_toml(path, "sweep")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise _spec_error(origin, exc) from None
    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base).resolve()
        base = _read_toml(base_path, "base scenario")
    else:
        base = dict(spec.base)
    base = apply_overrides(base, list(overrides))
    name = spec.name or _default_name(path)
    if "name" not in base:
        base["name"] = name
    axes = [_axis(origin, dotted, values) for dotted, values in _matrix_entries(spec.matrix)]
    owner: dict[str, str] = {}
    for axis in axes:
        for key in {k for one in axis.values for k in one}:
            if key in owner:
                raise ScenarioError(
                    f"{origin}: matrix: {key} is set by both {owner[key]!r} and {axis.key!r}"
                )
            owner[key] = axis.key
    cells: list[Cell] = []
    for position, parts in enumerate(itertools.product(*(axis.values for axis in axes))):
        settings = {k: v for part in parts for k, v in part.items()}
        cell_id = _cell_id(settings)
        data = _apply(base, settings, origin)
        scenario = validate_scenario(data, origin=f"{origin}: cell {cell_id}")
        if scenario.fault.kind == "kill-vmigrate":
            raise ScenarioError(
                f"{origin}: cell {cell_id}: fault.kind = 'kill-vmigrate' would kill the sweep "
                "itself: run it alone (`vmigrate run SCENARIO --set fault.kind=kill-vmigrate`, "
                "then `vmigrate testbed recover`)"
            )
        cells.append(Cell(position, cell_id, _label(axes, parts), settings, scenario))
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):  # two values that print alike: fall back to the ids
        cells = [Cell(c.position, c.cell_id, c.cell_id, c.settings, c.scenario) for c in cells]
    return Sweep(name, path, spec.repetitions, tuple(axes), tuple(cells))


def _default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-")[:64]
    return name or "sweep"


# ---------------------------------------------------------------------------------------------
# statistics


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


# ---------------------------------------------------------------------------------------------
# flattening a result into columns


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}; lists are left out (they are not single figures)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, child in value.items():
            out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    elif not isinstance(value, list):
        out[prefix] = value
    return out


def result_figures(result: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric figure of a result document under its dotted name; booleans (verification)
    as 0/1, and each consistency check as `checks.NAME.ok`."""
    figures: dict[str, float] = {}
    for key, value in result.items():
        if key in _NOT_FIGURES:
            continue
        for dotted, leaf in flatten(value, key).items():
            if isinstance(leaf, bool):
                figures[dotted] = int(leaf)
            elif _is_number(leaf) and math.isfinite(leaf):
                figures[dotted] = leaf
    for check in result.get("checks", []) or []:
        if isinstance(check, dict) and isinstance(check.get("ok"), bool) and check.get("name"):
            figures[f"checks.{check['name']}.ok"] = int(check["ok"])
    return figures


def scenario_columns(scenario: Scenario) -> dict[str, Any]:
    """The effective scenario as `scenario.section.key` columns."""
    return flatten(scenario_to_dict(scenario), "scenario")


# ---------------------------------------------------------------------------------------------
# the database


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_FIXED_COLUMNS = (
    "run_id TEXT PRIMARY KEY",
    "cell_id TEXT NOT NULL",
    "repetition INTEGER NOT NULL",
    "run_dir TEXT NOT NULL",
    "started_at TEXT",
    "duration_s REAL",
    "outcome TEXT NOT NULL",
    "error TEXT",
    "scenario_json TEXT NOT NULL",
    "result_json TEXT",
)


@dataclass
class RunRecord:
    """What the database keeps of one run."""

    run: PlannedRun
    started_at: str
    duration_s: float
    outcome: str
    error: str | None
    result: dict[str, Any] | None


def _scenario_json(scenario: Scenario) -> str:
    return json.dumps(scenario_to_dict(scenario), sort_keys=True)


class SweepDatabase:
    """SWEEP_DIR/sweep.db: table `runs` (one row per run: ids, outcome, every scenario key as a
    `scenario.section.key` column, every numeric figure as a dotted column, the whole
    result.json) and table `cells` (the sweep's cells in order, their labels and settings)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path)
        self.conn.row_factory = sqlite3.Row
        with self.conn:
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(_FIXED_COLUMNS)})")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS cells (cell_id TEXT PRIMARY KEY, position INTEGER "
                "NOT NULL, label TEXT NOT NULL, settings_json TEXT NOT NULL)"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS sweep (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
        self._columns = self._existing_columns()

    def __enter__(self) -> SweepDatabase:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def _existing_columns(self) -> set[str]:
        return {str(row["name"]) for row in self.conn.execute("PRAGMA table_info(runs)")}

    def _ensure_columns(self, values: Mapping[str, Any], kind: str) -> None:
        for name in values:
            if name not in self._columns:
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN {_quote(name)} {kind}".rstrip())
                self._columns.add(name)

    def finished(self) -> dict[str, str]:
        """run_id -> scenario_json of every run that has a result (skipped when resuming)."""
        rows = self.conn.execute(
            "SELECT run_id, scenario_json FROM runs WHERE result_json IS NOT NULL"
        )
        return {str(r["run_id"]): str(r["scenario_json"]) for r in rows}

    def save_sweep(self, sweep: Sweep) -> None:
        """The sweep's cells (their order and labels) and facts, for the summary."""
        with self.conn:
            self.conn.execute("DELETE FROM cells")
            self.conn.executemany(
                "INSERT INTO cells (cell_id, position, label, settings_json) VALUES (?, ?, ?, ?)",
                [
                    (c.cell_id, c.position, c.label, json.dumps(c.settings, sort_keys=True))
                    for c in sweep.cells
                ],
            )
            facts = {
                "name": sweep.name,
                "sweep_file": str(sweep.path),
                "repetitions": str(sweep.repetitions),
                "axes": json.dumps([a.key for a in sweep.axes]),
            }
            self.conn.executemany(
                "INSERT OR REPLACE INTO sweep (key, value) VALUES (?, ?)", facts.items()
            )

    def record(self, rec: RunRecord, run_dir: str) -> None:
        """Insert (or replace an earlier failed attempt of) one run."""
        scenario = scenario_columns(rec.run.cell.scenario)
        figures = result_figures(rec.result) if rec.result is not None else {}
        row: dict[str, Any] = {
            "run_id": rec.run.run_id,
            "cell_id": rec.run.cell.cell_id,
            "repetition": rec.run.repetition,
            "run_dir": run_dir,
            "started_at": rec.started_at,
            "duration_s": round(rec.duration_s, 3),
            "outcome": rec.outcome,
            "error": rec.error,
            "scenario_json": _scenario_json(rec.run.cell.scenario),
            "result_json": json.dumps(rec.result) if rec.result is not None else None,
        }
        with self.conn:
            self._ensure_columns(scenario, "")
            self._ensure_columns(figures, "REAL")
            row.update(scenario)
            row.update(figures)
            names = ", ".join(_quote(k) for k in row)
            marks = ", ".join("?" for _ in row)
            self.conn.execute(
                f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})", list(row.values())
            )

    def facts(self) -> dict[str, str]:
        return {str(r["key"]): str(r["value"]) for r in self.conn.execute("SELECT * FROM sweep")}

    def cells(self) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM cells ORDER BY position"))

    def runs(self) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM runs ORDER BY repetition, run_id"))


def _differences(before: str, after: str) -> str:
    """The first scenario keys that differ between two scenario_json strings, for a message."""
    old = flatten(json.loads(before))
    new = flatten(json.loads(after))
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:2])
    return shown + (f" (and {len(changed) - 2} more)" if len(changed) > 2 else "")


# ---------------------------------------------------------------------------------------------
# progress


class SweepProgress(Protocol):
    """What a front end is told while a sweep runs."""

    def start(self, sweep: Sweep, todo: int, skipped: int) -> None: ...

    def run_started(self, run: PlannedRun, index: int, todo: int) -> None: ...

    def run_finished(self, rec: RunRecord, index: int, todo: int) -> None: ...

    def finish(self) -> None: ...


class SilentProgress:
    """Shows nothing (tests, scripts)."""

    def start(self, sweep: Sweep, todo: int, skipped: int) -> None:
        pass

    def run_started(self, run: PlannedRun, index: int, todo: int) -> None:
        pass

    def run_finished(self, rec: RunRecord, index: int, todo: int) -> None:
        pass

    def finish(self) -> None:
        pass


class _EtaColumn(ProgressColumn):
    """Time left: the mean duration of the finished runs times the runs left, minus the time the
    current run has already taken (rich's own estimate needs progress every few seconds)."""

    def render(self, task: Task) -> Text:
        mean_s = task.fields.get("mean_run_s")
        started = task.fields.get("run_started")
        if task.finished:
            return Text("done", style="progress.remaining")
        if not isinstance(mean_s, float) or task.total is None:
            return Text("ETA -:--:--", style="progress.remaining")
        left = max(task.total - task.completed, 0)
        in_run = time.monotonic() - started if isinstance(started, float) else 0.0
        eta = mean_s * max(left - 1, 0) + max(mean_s - in_run, 0.0)
        return Text(f"ETA {dt.timedelta(seconds=round(eta))}", style="progress.remaining")


class RichSweepProgress:
    """A progress bar over all runs with an ETA, a line per finished run, and — as the
    experiment observer — the current stage of the current run under the bar."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._durations: list[float] = []
        self._current = ""

    def start(self, sweep: Sweep, todo: int, skipped: int) -> None:
        total = len(sweep.runs())
        self.console.print(
            f"[bold]sweep {sweep.name}[/bold]: {len(sweep.cells)} cell"
            f"{'s' if len(sweep.cells) != 1 else ''} {TIMES} {sweep.repetitions} repetition"
            f"{'s' if sweep.repetitions != 1 else ''} = {total} runs"
            + (f"; {skipped} already done (resuming)" if skipped else "")
            + (f"; {todo} to run" if todo != total else ""),
            highlight=False,
            soft_wrap=True,
        )
        if not todo:
            return
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]sweep[/bold]"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            _EtaColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "sweep", total=todo, detail="", mean_run_s=None, run_started=None
        )

    def _update(self, **fields: Any) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **fields)

    def run_started(self, run: PlannedRun, index: int, todo: int) -> None:
        self._current = f"{run.cell.label} #{run.repetition}"
        self._update(run_started=time.monotonic(), detail=self._current)

    def run_finished(self, rec: RunRecord, index: int, todo: int) -> None:
        self._durations.append(rec.duration_s)
        mean_s = statistics.fmean(self._durations)
        self._update(advance=1, mean_run_s=mean_s, run_started=None, detail="")
        self.console.print(run_line(rec, index, todo), highlight=False, soft_wrap=True)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # the experiment observer: the current run's stage, under the bar
    def stage(self, text: str) -> None:
        if self._progress is None:  # before or after the runs (e.g. the testbed going down)
            self.console.print(f"[cyan]•[/cyan] {text}", highlight=False)
        else:
            self._update(detail=f"{self._current}: {text}")

    def check(self, check: Check) -> None:
        from vmigrate.report.terminal import check_line

        if check.status == "fail":  # the run will say so; show why as it happens
            self.console.print(check_line(check), highlight=False, soft_wrap=True)

    def migration_progress(self, elapsed_s: float, stats: MigrationStats) -> None:
        self._update(
            detail=f"{self._current}: migrating {stats.percent_sent:.0f} % · "
            f"{stats.remaining_bytes / MIB:.0f} MiB left · {elapsed_s:.0f} s"
        )


def run_line(rec: RunRecord, index: int, todo: int) -> str:
    """One line (rich markup) for a finished run: outcome and its headline figures."""
    colour = "green" if rec.outcome == "completed" else "red"
    mark = "✓" if rec.outcome == "completed" else "✗"
    text = (
        f"[{colour}]{mark}[/{colour}] [{index + 1}/{todo}] {rec.run.cell.label} "
        f"#{rec.run.repetition}: [{colour}]{rec.outcome}[/{colour}]"
    )
    if rec.result is not None:
        mig = rec.result.get("migration") or {}
        svc = rec.result.get("service") or {}
        parts = [
            _fig(mig.get("total_time_s"), " s", 2, "migration "),
            _fig(svc.get("observed_downtime_ms"), " ms", 0, "downtime "),
            _fig(mig.get("downtime_reported_ms"), " ms", 0, "reported "),
        ]
        text += " · " + " · ".join(p for p in parts if p) if any(parts) else ""
    if rec.error:
        text += f" · [red]{_one_line(rec.error)[:160]}[/red]"
    return text + f" [dim]({rec.duration_s:.0f} s)[/dim]"


def _fig(value: Any, unit: str, digits: int, label: str) -> str:
    return f"{label}{value:,.{digits}f}{unit}" if _is_number(value) else ""


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class SweepSummary:
    """What a sweep left behind, and how its runs went."""

    sweep_dir: Path
    db_path: Path
    summary_path: Path
    comparison_path: Path
    ran: int
    skipped: int
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def crashed(self) -> int:
        """Runs without a result (the runner raised); a resumed sweep retries them."""
        return sum(
            cell["outcomes"].get(ERROR_OUTCOME, 0) for cell in self.document.get("cells", [])
        )


def run_sweep(
    sweep_path: Path,
    out_dir: Path,
    runner: Runner,
    progress: SweepProgress | None = None,
    overrides: Sequence[str] = (),
) -> SweepSummary:
    """Validate SWEEP.toml (every cell), then run what `out_dir` does not hold yet."""
    return execute_sweep(load_sweep(sweep_path, overrides), out_dir, runner, progress)


def execute_sweep(
    sweep: Sweep, out_dir: Path, runner: Runner, progress: SweepProgress | None = None
) -> SweepSummary:
    """Run every run of `sweep` that has no result in out_dir/sweep.db yet, recording each one
    as it ends; then write summary.json and comparison.html.

    A run whose runner raises is recorded as outcome "error" and the sweep goes on (UsageError
    excepted: the machine or the input is wrong, so every other run would fail alike). Refuses
    (ScenarioError) when out_dir holds runs of the same id made with a different scenario."""
    progress = progress or SilentProgress()
    db_path = out_dir / SWEEP_DB
    done: dict[str, str] = {}
    if db_path.exists():
        with contextlib.closing(SweepDatabase(db_path)) as db:
            done = db.finished()
    planned = sweep.runs()
    for run in planned:
        if run.run_id in done and done[run.run_id] != _scenario_json(run.cell.scenario):
            raise ScenarioError(
                f"{out_dir}: run {run.run_id} there was made with another scenario "
                f"({_differences(done[run.run_id], _scenario_json(run.cell.scenario))}); "
                "use another --out directory, or remove that one"
            )
    todo = [run for run in planned if run.run_id not in done]
    out_dir.mkdir(parents=True, exist_ok=True)
    with SweepDatabase(db_path) as db:
        db.save_sweep(sweep)
        progress.start(sweep, len(todo), len(planned) - len(todo))
        try:
            for index, run in enumerate(todo):
                progress.run_started(run, index, len(todo))
                rec = _run_one(run, out_dir, runner)
                db.record(rec, f"{RUNS_DIR}/{run.dir_name}")
                progress.run_finished(rec, index, len(todo))
        finally:
            progress.finish()
        document = summarize(db)
    summary_path = out_dir / SUMMARY_FILE
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(summary_path)
    comparison = render_comparison(out_dir)
    return SweepSummary(
        sweep_dir=out_dir,
        db_path=db_path,
        summary_path=summary_path,
        comparison_path=comparison,
        ran=len(todo),
        skipped=len(planned) - len(todo),
        document=document,
    )


def _run_one(run: PlannedRun, out_dir: Path, runner: Runner) -> RunRecord:
    """One run in a fresh directory (leftovers of an interrupted attempt removed first)."""
    run_dir = out_dir / RUNS_DIR / run.dir_name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.UTC).isoformat()
    t0 = time.monotonic()
    result: dict[str, Any] | None
    try:
        result = runner(run.cell.scenario, run_dir)
        outcome = str(result.get("outcome") or "failed")
        error = result.get("error")
    except UsageError:
        raise
    except Exception as exc:
        result, outcome = None, ERROR_OUTCOME
        error = f"{type(exc).__name__}: {_one_line(str(exc))}" if str(exc) else type(exc).__name__
    return RunRecord(
        run=run,
        started_at=started_at,
        duration_s=time.monotonic() - t0,
        outcome=outcome,
        error=str(error) if error else None,
        result=result,
    )


def summarize(db: SweepDatabase) -> dict[str, Any]:
    """summary.json: per cell (in sweep order) its runs, outcomes, and the statistics of the
    headline figures over its completed runs (a timed-out run's figures describe something
    else: they are listed per run, not averaged in)."""
    facts = db.facts()
    runs = db.runs()
    by_cell: dict[str, list[sqlite3.Row]] = {}
    for row in runs:
        by_cell.setdefault(str(row["cell_id"]), []).append(row)
    cells = []
    for cell in db.cells():
        rows = by_cell.get(str(cell["cell_id"]), [])
        outcomes: dict[str, int] = {}
        for row in rows:
            outcomes[str(row["outcome"])] = outcomes.get(str(row["outcome"]), 0) + 1
        completed = [r for r in rows if r["outcome"] == "completed"]
        cells.append(
            {
                "cell_id": cell["cell_id"],
                "label": cell["label"],
                "settings": json.loads(cell["settings_json"]),
                "runs": len(rows),
                "completed": len(completed),
                "outcomes": dict(sorted(outcomes.items())),
                "figures": {
                    key: describe(_column(r, key) for r in completed).as_dict()
                    for key, _ in HEADLINE
                },
                "run_list": [_run_entry(r) for r in rows],
            }
        )
    return {
        "summary_version": SUMMARY_VERSION,
        "name": facts.get("name", ""),
        "sweep_file": facts.get("sweep_file", ""),
        "repetitions": int(facts.get("repetitions", "0") or 0),
        "axes": json.loads(facts.get("axes", "[]")),
        "headline": {key: label for key, label in HEADLINE},
        "statistics": "over the completed runs of each cell, missing figures ignored; stdev is "
        "the sample standard deviation; ci95 is the 95 % confidence interval of the mean "
        "(Student t, n - 1 degrees of freedom)",
        "cells": cells,
    }


def _column(row: sqlite3.Row, key: str) -> float | None:
    value = row[key] if key in row.keys() else None  # noqa: SIM118 (sqlite3.Row has no `in`)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _run_entry(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "repetition": row["repetition"],
        "run_dir": row["run_dir"],
        "started_at": row["started_at"],
        "duration_s": row["duration_s"],
        "outcome": row["outcome"],
        "error": row["error"],
        "has_report": row["result_json"] is not None,
        "figures": {key: _column(row, key) for key, _ in HEADLINE},
    }


# ---------------------------------------------------------------------------------------------
# the real runner and the terminal table


class ExperimentRunner:
    """Runs each scenario with run_experiment on one testbed. The testbed is brought up at the
    first run (at that scenario's link rate; each run re-shapes it to its own) and taken down
    by `close` if this sweep brought it up."""

    def __init__(self, testbed: Testbed, observer: ExperimentObserver) -> None:
        self.testbed = testbed
        self.observer = observer
        self.owns_testbed = False

    def __enter__(self) -> ExperimentRunner:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def __call__(self, scenario: Scenario, out_dir: Path) -> dict[str, Any]:
        from vmigrate.experiment import run_experiment

        if os.geteuid() != 0:
            raise EnvironmentProblem("vmigrate needs root for namespaces and taps: run with sudo")
        if not self.owns_testbed and not self.testbed.is_healthy():
            self.owns_testbed = True
            self.testbed.up(scenario.network.bandwidth_mbit, self.observer.stage)
        return run_experiment(scenario, out_dir, self.testbed, self.observer)

    def close(self) -> list[str]:
        """Take the testbed down if this sweep brought it up; return what could not be removed."""
        if not self.owns_testbed:
            return []
        self.observer.stage("tearing the testbed down")
        self.owns_testbed = False
        return self.testbed.down()


def _cell_text(stats: Mapping[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    mean, half = stats.get("mean"), stats.get("ci95_half")
    if mean is None:
        return "[dim]—[/dim]"
    text = f"{mean / scale:,.{digits}f}"
    return text + (f" ± {half / scale:,.{digits}f}" if half is not None else "")


def summary_table(document: Mapping[str, Any]) -> Table:
    """Per cell: completed runs and the headline figures as mean ± 95 % CI half-width."""
    table = Table(
        title=f"sweep {document.get('name', '')}: mean ± 95 % CI over completed runs",
        caption="extra CPU: CPU-seconds above the baseline, source / destination / storage",
    )

    def figure(key: str, scale: float = 1.0, digits: int = 1) -> Callable[..., str]:
        return lambda figs: _cell_text(figs.get(key, {}), scale, digits)

    def cpu(figs: Mapping[str, Any]) -> RenderableType:
        parts = [
            _cell_text(figs.get(f"resources.hosts.{h}.cpu_seconds.extra", {}), 1.0, 2)
            for h in ("source", "destination", "storage")
        ]
        return Group(*(Text.from_markup(p) for p in parts))

    columns: list[tuple[str, Callable[[Mapping[str, Any]], RenderableType]]] = [
        ("total s", figure("migration.total_time_s", digits=2)),
        ("downtime ms\nobserved", figure("service.observed_downtime_ms", digits=0)),
        ("downtime ms\nreported", figure("migration.downtime_reported_ms", digits=0)),
        ("p99 during\nms", figure("service.latency_ms.during.p99", digits=0)),
        ("sent MiB", figure("migration.transferred_bytes", MIB, 0)),
        ("Mbit/s", figure("migration.throughput_mbit_s", digits=0)),
        ("extra CPU s", cpu),
    ]
    table.add_column("cell")
    table.add_column("completed", justify="right")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for cell in document.get("cells", []):
        runs, completed = cell.get("runs", 0), cell.get("completed", 0)
        others = ", ".join(
            f"{n} {outcome}"
            for outcome, n in cell.get("outcomes", {}).items()
            if outcome != "completed"
        )
        done = f"{completed}/{runs}" + (f"\n{others}" if others else "")
        figs = cell.get("figures", {})
        table.add_row(
            str(cell.get("label", cell.get("cell_id"))),
            Text(done, style="red" if completed < runs or not runs else ""),
            *(render(figs) for _, render in columns),
        )
    return table
