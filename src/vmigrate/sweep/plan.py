"""The sweep file: SWEEP.toml read and checked, its matrix expanded into cells and runs."""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vmigrate.config import SECTIONS, Scenario, apply_overrides, read_toml, validate_scenario
from vmigrate.errors import ScenarioError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


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


def one_line(text: str) -> str:
    """`text` with its runs of whitespace (newlines too) as single spaces, for one-line messages."""
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
    return ScenarioError(f"{origin}: {one_line(text)}{suffix}")


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
    raw = read_toml(path, "sweep")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise _spec_error(origin, exc) from None
    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base).resolve()
        base = read_toml(base_path, "base scenario")
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
