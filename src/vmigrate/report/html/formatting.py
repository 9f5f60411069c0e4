"""Figures of result.json as HTML: units from their names, labels for people, small tables."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

MIB = 1024 * 1024
TIMES, MINUS = "\u00d7", "\u2212"  # multiplication and minus signs


def is_num(value: Any) -> bool:
    """A JSON number (bool is an int in Python, but not a figure)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def esc(value: Any) -> str:
    """Text from result.json made safe inside HTML (content and attribute values)."""
    return html.escape(str(value), quote=True)


def plain(value: float, digits: int | None = None) -> str:
    """A number with thousands separators; floats to `digits` decimals (adaptive if None)."""
    if isinstance(value, int) or (digits is None and float(value).is_integer()):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return "—"
    if digits is None:
        size = abs(value)
        digits = 0 if size >= 1000 else 1 if size >= 10 else 2 if size >= 1 else 3
    return f"{value:,.{digits}f}"


def _bytes(value: float) -> str:
    """Bytes in the largest binary unit that keeps the number readable."""
    size = abs(value)
    if size >= 1024**3:
        return f"{value / 1024**3:,.2f} GiB"
    if size >= MIB:
        return f"{value / MIB:,.1f} MiB"
    if size >= 1024:
        return f"{value / 1024:,.1f} KiB"
    return f"{value:,.0f} B"


UNIT_SUFFIXES: tuple[tuple[str, Callable[[float], str]], ...] = (
    ("_mbit_s", lambda v: f"{plain(v)} Mbit/s"),
    ("_mib_s", lambda v: f"{plain(v)} MiB/s"),
    ("_rps", lambda v: f"{plain(v)} req/s"),
    ("_bytes", _bytes),
    ("_mib", lambda v: f"{plain(v)} MiB"),
    ("_ms", lambda v: f"{plain(v)} ms"),
    ("_pct", lambda v: f"{plain(v)} %"),
    ("_ratio", lambda v: f"{plain(v, 3)} {TIMES}"),
    ("_s", lambda v: f"{plain(v, 3 if abs(v) < 100 else 1)} s"),
)


# nested figures ({"mean": .., "peak": ..}) that take the unit of the key they are under
_UNITLESS = {"mean", "peak", "during", "extra", "before", "after", "min", "max"}

LABELS = {
    "transferred_bytes": "transferred",
    "zero_pages": "zero pages",
    "normal_pages": "normal pages",
    "normal_bytes": "normal pages (bytes)",
    "precopy_bytes": "sent while running (pre-copy)",
    "downtime_bytes": "sent while paused",
    "postcopy_bytes": "sent after resume (post-copy)",
    "dirty_rate_mib_s": "dirty rate",
    "iterations": "iterations (dirty-bitmap syncs)",
    "amplification_ratio": "amplification (transferred / guest RAM)",
    "failed_during": "failed during the migration",
    "running_on": "VM runs on",
    "source_state_after": "source state after",
    "service_ok_after": "service answers after (same boot)",
    "memory_checksum_ok": "memory checksum unchanged",
    "memory_writes_intact": "no guest write lost",
    "working_set_pages_checked": "working-set pages checked",
    "working_set_pages_mismatched": "working-set pages mismatched",
    "boot_id_before": "boot id before",
    "boot_id_after": "boot id after",
    "memory_checksum_before": "memory checksum before",
    "memory_checksum_after": "memory checksum after",
}


def fmt(key: str, value: Any) -> str:
    """One figure as HTML, its unit taken from its name's suffix (`_ms`, `_bytes`, ...)."""
    if value is None:
        return '<span class="muted">—</span>'
    if isinstance(value, bool):
        return '<span class="yes">yes</span>' if value else '<span class="no">no</span>'
    if is_num(value):
        for suffix, render in UNIT_SUFFIXES:
            if key.endswith(suffix):
                title = f' title="{plain(value)}"' if suffix == "_bytes" else ""
                return f"<span{title}>{esc(render(float(value)))}</span>"
        return esc(plain(value))
    if isinstance(value, Mapping):
        parts = [f"{esc(k)} {fmt(key if k in _UNITLESS else k, v)}" for k, v in value.items()]
        return " · ".join(parts) if parts else '<span class="muted">—</span>'
    if isinstance(value, list):
        return esc(", ".join(str(v) for v in value)) if value else '<span class="muted">—</span>'
    return esc(value)


def figure_label(key: str) -> str:
    """A figure's name for people: its unit suffix dropped (the value carries the unit)."""
    if key in LABELS:
        return LABELS[key]
    for suffix, _ in UNIT_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key.removesuffix(suffix)
            break
    return key.replace("_", " ")


def obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (missing sections render as —)."""
    return value if isinstance(value, dict) else {}


def num(value: Any) -> float | None:
    """A finite number, or None (missing, null, NaN, not a number)."""
    return float(value) if is_num(value) and math.isfinite(float(value)) else None


def kv_table(rows: Iterable[tuple[str, str]], cls: str = "kv") -> str:
    """A two-column table: label (escaped here), value (already HTML)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def grid_table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "grid") -> str:
    """A table with a header row; cells are already HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
