"""The HTML report of one run: RUN/report.html, one self-contained page a person can open offline.

It shows result.json as readable tables (migration, service, per-host resources, data moved,
verification, checks) and the whole run as one time line (plotly, every panel sharing the time
axis) drawn from RUN/series. plotly.js is inlined once, so the page needs no network and no other
file. The output depends only on the run directory: the same input gives the same bytes.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from plotly.subplots import make_subplots

from vmigrate.measure.recorder import load_series

REPORT_FILE = "report.html"
RESULT_FILE = "result.json"
MAX_POINTS = 20_000  # per trace; above it a trace is thinned, keeping each bucket's extremes
MIB = 1024 * 1024
ROLLING_WINDOW_S = 0.5
WINDOW_NAMES = ("baseline", "during", "after")

Array = npt.NDArray[np.float64]

HOST_COLOURS = {
    "source": "#1f6feb",
    "destination": "#e8590c",
    "storage": "#2f9e44",
    "client": "#8250df",
}
SPARE_COLOURS = ("#c2255c", "#0c8599", "#5c940d", "#862e9c", "#495057")
CLASS_DASH = {"vcpu": "dash", "migration": "dot", "main": "dashdot", "other": "longdash"}
WINDOW_FILL = {  # band on the plot, swatch in the legend line above it
    "baseline": ("rgba(31, 111, 235, 0.07)", "rgba(31, 111, 235, 0.25)"),
    "during": ("rgba(245, 159, 0, 0.16)", "rgba(245, 159, 0, 0.45)"),
    "after": ("rgba(47, 158, 68, 0.08)", "rgba(47, 158, 68, 0.3)"),
}
MOMENTS = (  # phases.* key, label, colour, dash
    ("stop_and_copy_s", "stop-and-copy", "#d1242f", "dash"),
    ("resume_on_destination_s", "resumed on destination", "#8250df", "dash"),
    ("completion_s", "completed", "#1a7f37", "dot"),
)
ACTION_LINE = ("#bf8700", "dashdot")  # what the orchestrator did (stall, post-copy, restart)
TIMES, MINUS = "\u00d7", "\u2212"  # multiplication and minus signs
OUTCOME_CLASS = {"completed": "ok", "failed": "fail", "timeout": "fail", "cancelled": "warn"}


# ---------------------------------------------------------------------------------------------
# formatting


def _is_num(value: Any) -> bool:
    """A JSON number (bool is an int in Python, but not a figure)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _esc(value: Any) -> str:
    """Text from result.json made safe inside HTML (content and attribute values)."""
    return html.escape(str(value), quote=True)


def _plain(value: float, digits: int | None = None) -> str:
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
    ("_mbit_s", lambda v: f"{_plain(v)} Mbit/s"),
    ("_mib_s", lambda v: f"{_plain(v)} MiB/s"),
    ("_rps", lambda v: f"{_plain(v)} req/s"),
    ("_bytes", _bytes),
    ("_mib", lambda v: f"{_plain(v)} MiB"),
    ("_ms", lambda v: f"{_plain(v)} ms"),
    ("_pct", lambda v: f"{_plain(v)} %"),
    ("_ratio", lambda v: f"{_plain(v, 3)} {TIMES}"),
    ("_s", lambda v: f"{_plain(v, 3 if abs(v) < 100 else 1)} s"),
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
    if _is_num(value):
        for suffix, render in UNIT_SUFFIXES:
            if key.endswith(suffix):
                title = f' title="{_plain(value)}"' if suffix == "_bytes" else ""
                return f"<span{title}>{_esc(render(float(value)))}</span>"
        return _esc(_plain(value))
    if isinstance(value, Mapping):
        parts = [f"{_esc(k)} {fmt(key if k in _UNITLESS else k, v)}" for k, v in value.items()]
        return " · ".join(parts) if parts else '<span class="muted">—</span>'
    if isinstance(value, list):
        return _esc(", ".join(str(v) for v in value)) if value else '<span class="muted">—</span>'
    return _esc(value)


def _label(key: str) -> str:
    """A figure's name for people: its unit suffix dropped (the value carries the unit)."""
    if key in LABELS:
        return LABELS[key]
    for suffix, _ in UNIT_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key.removesuffix(suffix)
            break
    return key.replace("_", " ")


def _d(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (missing sections render as —)."""
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    """A finite number, or None (missing, null, NaN, not a number)."""
    return float(value) if _is_num(value) and math.isfinite(float(value)) else None


def _kv_table(rows: Iterable[tuple[str, str]], cls: str = "kv") -> str:
    """A two-column table: label (escaped here), value (already HTML)."""
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def _grid_table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "grid") -> str:
    """A table with a header row; cells are already HTML."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------
# the tables


def _header(result: dict[str, Any], run_dir: Path) -> str:
    """Scenario name, coloured outcome, strategy, accelerator, start, set-up and the error."""
    scenario = _d(result.get("scenario"))
    env = _d(result.get("environment"))
    mig = _d(result.get("migration"))
    outcome = str(result.get("outcome", "unknown"))
    strategy = mig.get("strategy") or _d(scenario.get("migration")).get("strategy")
    accel = env.get("accel") or "?"
    reason = env.get("accel_reason")
    meta = [
        ("strategy", _esc(strategy or "—") + (" over TLS" if mig.get("tls") else "")),
        (
            "accelerator",
            _esc(accel) + (f' <span class="muted">({_esc(reason)})</span>' if reason else ""),
        ),
        ("started", _esc(result.get("started_at", "—"))),
        ("run", _esc(run_dir.name)),
        ("QEMU", _esc(env.get("qemu_version", "—"))),
        ("vmigrate", _esc(env.get("tool_version", "—"))),
    ]
    if env.get("backend") == "libvirt":
        meta.insert(1, ("backend", "libvirt " + _esc(env.get("libvirt_version", ""))))
    vm = _d(scenario.get("vm"))
    work = _d(scenario.get("workload"))
    net = _d(scenario.get("network"))
    load = _d(scenario.get("load"))
    setup = [
        ("guest", f"{fmt('x_mib', vm.get('memory_mib'))} · {fmt('x', vm.get('vcpus'))} vCPU"),
        (
            "workload",
            _esc(work.get("kind", "—"))
            + (
                f" · dirties {fmt('x_mib_s', work.get('dirty_rate_mib_s'))} of "
                f"{fmt('x_mib', work.get('working_set_mib'))}"
                if work.get("kind") == "memory"
                else ""
            ),
        ),
        ("load", fmt("x_rps", load.get("rate_rps"))),
        ("link", fmt("x_mbit_s", net.get("bandwidth_mbit"))),
        ("downtime limit", fmt("x_ms", _d(scenario.get("migration")).get("downtime_limit_ms"))),
    ]
    error = result.get("error")
    error_html = (
        f'<div class="error" id="run-error"><b>error</b> <pre>{_esc(error)}</pre></div>'
        if error
        else ""
    )
    return (
        '<header id="header">'
        f'<div class="title"><h1>{_esc(scenario.get("name", "run"))}</h1>'
        f'<span class="badge outcome {OUTCOME_CLASS.get(outcome, "warn")}">{_esc(outcome)}</span>'
        "</div>"
        '<div class="meta">'
        + "".join(f'<span><span class="muted">{k}</span> <b>{v}</b></span>' for k, v in meta)
        + '</div><div class="meta">'
        + "".join(f'<span><span class="muted">{k}</span> {v}</span>' for k, v in setup)
        + f"</div>{error_html}</header>"
    )


def _checks(result: dict[str, Any]) -> tuple[str, str]:
    """(banner, section): the banner only when a check is false."""
    checks = [c for c in result.get("checks", []) if isinstance(c, dict)]
    failed = [c for c in checks if c.get("ok") is False]
    banner = ""
    if failed:
        names = ", ".join(str(c.get("name")) for c in failed)
        banner = (
            f'<div class="banner" id="check-banner" role="alert">✗ {len(failed)} of '
            f"{len(checks)} consistency check{'s' if len(checks) != 1 else ''} failed: "
            f"<b>{_esc(names)}</b> — a figure below is wrong or the testbed misbehaved.</div>"
        )
    rows = []
    for check in checks:
        ok = check.get("ok")
        cls, word = (
            ("check-ok", "pass")
            if ok is True
            else ("check-fail", "fail")
            if ok is False
            else ("check-na", "n/a")
        )
        figures = _d(check.get("figures"))
        chips = "".join(
            f'<span class="chip"><span class="muted">{_esc(_label(k))}</span> {fmt(k, v)}</span>'
            for k, v in figures.items()
        )
        rows.append(
            f'<tr class="{cls}"><td><span class="badge {cls}">{word}</span></td>'
            f'<td><code>{_esc(check.get("name", "?"))}</code><div class="muted small">'
            f"{_esc(check.get('detail', ''))}</div></td><td>{chips}</td></tr>"
        )
    summary = (
        f"{sum(c.get('ok') is True for c in checks)} passed · {len(failed)} failed · "
        f"{sum(c.get('ok') is None for c in checks)} not evaluated"
    )
    table = (
        '<table class="grid checks"><thead><tr><th></th><th>check</th><th>figures</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">no checks recorded</p>'
    )
    section = (
        f'<section id="checks"><h2>Checks <span class="muted small">{summary}</span></h2>'
        f"{table}</section>"
    )
    return banner, section


def _cards(result: dict[str, Any]) -> str:
    """The headline figures, big, above everything else."""
    mig = _d(result.get("migration"))
    svc = _d(result.get("service"))
    lat = _d(svc.get("latency_ms"))
    req = _d(svc.get("requests"))
    sla = _d(svc.get("sla_violations"))
    ram = _num(mig.get("guest_ram_bytes"))
    sent = _num(mig.get("transferred_bytes"))
    p99 = [_num(_d(lat.get(w)).get("p99")) for w in WINDOW_NAMES]
    counts = [req[k] for k in ("errors", "timeouts") if _is_num(req.get(k))]
    failed = sum(counts) if counts else None
    cards = [
        (
            "migration time",
            fmt("x_s", mig.get("total_time_s")),
            f"setup {fmt('x_s', mig.get('setup_time_s'))}",
        ),
        (
            "downtime (probe)",
            fmt("x_ms", svc.get("observed_downtime_ms")),
            f"hypervisor reports {fmt('x_ms', mig.get('downtime_reported_ms'))}",
        ),
        (
            "transferred",
            fmt("x_bytes", mig.get("transferred_bytes")),
            f"{_plain(sent / ram, 2)} {TIMES} guest RAM" if sent is not None and ram else "",
        ),
        (
            "throughput",
            fmt("x_mbit_s", mig.get("throughput_mbit_s")),
            f"{fmt('x', mig.get('iterations'))} iterations",
        ),
        (
            "latency p99 during",
            fmt("x_ms", p99[1]),
            "baseline " + fmt("x_ms", p99[0]) + " · after " + fmt("x_ms", p99[2]),
        ),
        (
            "over SLA",
            fmt("x", sla.get("over_sla")),
            f"requests slower than {fmt('x_ms', svc.get('sla_ms'))} during the migration",
        ),
        (
            "failed requests",
            fmt("x", failed),
            f"of {fmt('x', req.get('sent'))} · timeouts {fmt('x', req.get('timeouts'))}",
        ),
        (
            "probes lost",
            fmt("x", svc.get("probe_lost")),
            f"of {fmt('x', svc.get('probe_sent'))} sent during the migration",
        ),
    ]
    body = "".join(
        f'<div class="card"><div class="k">{_esc(k)}</div><div class="v">{v}</div>'
        f'<div class="sub">{sub}</div></div>'
        for k, v, sub in cards
    )
    return f'<div class="cards" id="headline">{body}</div>'


def _migration(result: dict[str, Any]) -> str:
    """Times, downtime reported vs observed, bytes, passes, throughput, and its moments."""
    mig = _d(result.get("migration"))
    svc = _d(result.get("service"))
    phases = _d(result.get("phases"))
    ram = _num(mig.get("guest_ram_bytes"))
    sent = _num(mig.get("transferred_bytes"))
    share = (
        f' <span class="muted">({_plain(100 * sent / ram, 1)} % of guest RAM)</span>'
        if sent is not None and ram
        else ""
    )
    interval = svc.get("probe_interval_ms")
    passes = [p for p in phases.get("iterations", []) if isinstance(p, dict)]
    rows = [
        ("strategy", fmt("strategy", mig.get("strategy"))),
        ("total time", fmt("total_time_s", mig.get("total_time_s"))),
        ("setup time", fmt("setup_time_s", mig.get("setup_time_s"))),
        (
            "downtime reported (hypervisor)",
            fmt("downtime_reported_ms", mig.get("downtime_reported_ms")),
        ),
        (
            "downtime observed (probe)",
            fmt("observed_downtime_ms", svc.get("observed_downtime_ms"))
            + (
                f' <span class="muted">± {fmt("x_ms", interval)}</span>'
                if interval is not None
                else ""
            ),
        ),
        ("transferred", fmt("transferred_bytes", mig.get("transferred_bytes")) + share),
        ("remaining at the end", fmt("remaining_bytes", mig.get("remaining_bytes"))),
        ("iterations (pre-copy passes)", fmt("iterations", mig.get("iterations"))),
        ("average throughput", fmt("throughput_mbit_s", mig.get("throughput_mbit_s"))),
        ("guest RAM", fmt("guest_ram_bytes", mig.get("guest_ram_bytes"))),
        ("progress samples", fmt("progress_samples", mig.get("progress_samples"))),
        ("attempts", fmt("attempts", mig.get("attempts"))),
    ]
    rows += [
        (
            f"orchestrator at {_plain(float(a['t_s']), 2)} s",
            _esc(a.get("action")) + ' <span class="muted">(since the run started)</span>',
        )
        for a in mig.get("actions", [])
        if isinstance(a, dict) and _num(a.get("t_s")) is not None
    ]
    moments = [
        (f"{label} at", fmt("x_s", phases.get(key)) + ' <span class="muted">after the start</span>')
        for key, label, _, _ in MOMENTS
    ]
    if passes:
        moments.append(
            (
                "passes started at",
                ", ".join(f"#{_esc(p.get('pass'))} {fmt('x_s', p.get('t_s'))}" for p in passes),
            )
        )
    return (
        '<section id="migration"><h2>Migration</h2>'
        + _kv_table(rows)
        + '<h3>Moments <span class="muted small">seconds since the migration started</span></h3>'
        + _kv_table(moments)
        + "</section>"
    )


def _service(result: dict[str, Any]) -> str:
    """Latency per window, requests, SLA violations, probe figures."""
    svc = _d(result.get("service"))
    lat = _d(svc.get("latency_ms"))
    rps = _d(svc.get("throughput_rps"))
    windows = list(WINDOW_NAMES) + [w for w in lat if w not in WINDOW_NAMES]
    header = ["window", "requests", "p50", "p90", "p99", "p99.9", "max", "mean", "throughput"]
    rows = []
    for window in windows:
        stats = _d(lat.get(window))
        rows.append(
            [f"<b>{_esc(window)}</b>", fmt("count", stats.get("count"))]
            + [fmt("x_ms", stats.get(k)) for k in ("p50", "p90", "p99", "p999", "max", "mean")]
            + [fmt("x_rps", rps.get(window))]
        )
    req = _d(svc.get("requests"))
    sla = _d(svc.get("sla_violations"))
    requests = [(_label(k), fmt(k, v)) for k, v in req.items()]
    violations = [
        ("SLA", fmt("sla_ms", svc.get("sla_ms"))),
        ("slower than the SLA (migration window)", fmt("over_sla", sla.get("over_sla"))),
        (
            f"slower than 2 {TIMES} baseline p99",
            fmt("x", sla.get("over_2x_baseline_p99"))
            + ' <span class="muted">(baseline p99 '
            + f"{fmt('x_ms', sla.get('baseline_p99_ms'))})</span>",
        ),
    ]
    probe = [
        ("interval", fmt("probe_interval_ms", svc.get("probe_interval_ms"))),
        ("sent during the migration", fmt("probe_sent", svc.get("probe_sent"))),
        ("lost during the migration", fmt("probe_lost", svc.get("probe_lost"))),
        (
            "longest gap between replies",
            fmt("observed_downtime_ms", svc.get("observed_downtime_ms")),
        ),
        (
            "gap started at",
            fmt("x_s", svc.get("observed_downtime_start_s"))
            + ' <span class="muted">since the run started</span>',
        ),
    ]
    known = {
        "probe_interval_ms",
        "observed_downtime_ms",
        "observed_downtime_start_s",
        "probe_sent",
        "probe_lost",
        "latency_ms",
        "requests",
        "sla_ms",
        "sla_violations",
        "throughput_rps",
        "histograms",
    }
    probe += [(_label(k), fmt(k, v)) for k, v in svc.items() if k not in known]
    return (
        '<section id="service"><h2>Service <span class="muted small">as the client saw it; '
        "latency from each request's intended send time</span></h2>"
        + _grid_table(header, rows, "grid numbers")
        + '<div class="cols3">'
        + f"<div><h3>Requests</h3>{_kv_table(requests)}</div>"
        + f"<div><h3>SLA violations</h3>{_kv_table(violations)}</div>"
        + f"<div><h3>Probe (UDP echo)</h3>{_kv_table(probe)}</div>"
        + "</div></section>"
    )


def _window_cell(figures: Any, render: Callable[[Any], str]) -> str:
    """`during` big, `extra` (over what the baseline rate predicts) small, signed."""
    fig = _d(figures)
    during, extra = fig.get("during"), fig.get("extra")
    if during is None and extra is None:
        return '<span class="muted">—</span>'
    extra_html = ""
    if extra is not None and _is_num(extra):
        sign = "+" if extra >= 0 else MINUS
        extra_html = f' <span class="extra">{sign}{render(abs(extra))} extra</span>'
    return f"{render(during)}{extra_html}"


def _resources(result: dict[str, Any]) -> str:
    """One column per host: CPU (total, baseline, peak, QEMU by thread class), network, disk,
    RSS; totals over the migration window with what they cost above the baseline."""
    res = _d(result.get("resources"))
    hosts = _d(res.get("hosts"))
    if not hosts:
        return '<section id="resources"><h2>Resources</h2><p class="muted">no data</p></section>'
    names = list(hosts)

    def cpu_s(v: Any) -> str:
        return fmt("x_s", v)

    def size(v: Any) -> str:
        return fmt("x_bytes", v)

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> list[str]:
        return [f"<b>{_esc(label)}</b>"] + [cell(_d(hosts[h])) for h in names]

    def window(
        key: str, render: Callable[[Any], str], sub: str | None = None
    ) -> Callable[..., str]:
        """A cell: figures `key` (or `key`.`sub`) of a host, as during + extra."""

        def cell(host: dict[str, Any]) -> str:
            figures = _d(host.get(key)).get(sub) if sub else host.get(key)
            return _window_cell(figures, render)

        return cell

    def rss(which: str) -> Callable[..., str]:
        return lambda host: size(_d(host.get("rss_bytes")).get(which))

    rows = [
        row("CPU during the migration", window("cpu_seconds", cpu_s)),
        row(
            "CPU in the baseline",
            lambda h: (
                fmt("x_pct", 100 * v) + ' <span class="muted">of a core</span>'
                if (v := _num(_d(h.get("cpu_seconds")).get("baseline_rate"))) is not None
                else fmt("x", None)
            ),
        ),
        row(
            "CPU peak",
            lambda h: fmt("x_pct", h.get("cpu_pct_peak")) + ' <span class="muted">of a core</span>',
        ),
    ]
    classes: list[str] = []
    for h in names:
        for klass in _d(_d(hosts[h]).get("qemu_cpu_seconds")):
            if klass not in classes:
                classes.append(klass)
    for klass in classes:
        rows.append(
            row(
                f"QEMU CPU, {klass} threads",
                window("qemu_cpu_seconds", cpu_s, klass),
            )
        )
    for key, label in (
        ("net_tx_bytes", "network sent"),
        ("net_rx_bytes", "network received"),
        ("disk_read_bytes", "disk read"),
        ("disk_write_bytes", "disk written"),
    ):
        rows.append(row(label, window(key, size)))
    for key, label in (("before", "before"), ("peak", "peak during"), ("after", "after")):
        rows.append(row(f"RSS {label}", rss(key)))
    rows.append(row("processes", lambda h: fmt("processes", h.get("processes"))))
    interval = res.get("sample_interval_ms")
    return (
        '<section id="resources"><h2>Resources per host <span class="muted small">totals over the '
        "migration window; <i>extra</i> = above what the baseline rate predicts for the same "
        f"time; sampled every {fmt('x_ms', interval)}</span></h2>"
        + _grid_table(["", *names], rows, "grid numbers hosts")
        + "</section>"
    )


def _data(result: dict[str, Any]) -> str:
    """The data section, every figure with its unit."""
    data = _d(result.get("data"))
    rows = [(_label(k), fmt(k, v)) for k, v in data.items()]
    body = _kv_table(rows) if rows else '<p class="muted">no data</p>'
    return f'<section id="data"><h2>Data moved</h2>{body}</section>'


PREFLIGHT_CLASS = {"pass": "check-ok", "warn": "warn", "fail": "check-fail"}


def _preflight(result: dict[str, Any]) -> str:
    """The pre-flight checks: status, what each found, and the fix for what did not pass."""
    pre = result.get("preflight")
    if not isinstance(pre, dict):
        return ""
    if pre.get("skipped"):
        head = '<span class="muted small">skipped (--skip-preflight)</span>'
    else:
        head = (
            f'<span class="muted small">guest CPU {_esc(pre.get("cpu_model"))} · machine '
            f"{_esc(pre.get('machine'))}</span>"
        )
    rows = []
    for check in pre.get("checks", []):
        if not isinstance(check, dict):
            continue
        status = str(check.get("status"))
        cls = PREFLIGHT_CLASS.get(status, "check-na")
        fix = (
            f'<div class="small"><b>fix:</b> {_esc(check.get("fix"))}</div>'
            if check.get("fix")
            else ""
        )
        rows.append(
            f'<tr class="{cls}"><td><span class="badge {cls}">{_esc(status)}</span></td>'
            f"<td><code>{_esc(check.get('name', '?'))}</code></td>"
            f"<td>{_esc(check.get('message', ''))}{fix}</td></tr>"
        )
    table = (
        '<table class="grid checks"><thead><tr><th></th><th>check</th><th>finding</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else ""
    )
    return f'<section id="preflight"><h2>Pre-flight {head}</h2>{table}</section>'


def _verification(result: dict[str, Any]) -> str:
    """Where the VM runs and whether it is intact; a mismatch or a change in red."""
    ver = _d(result.get("verification"))
    rows = []
    for key, value in ver.items():
        cell = fmt(key, value)
        if key == "working_set_pages_mismatched" and _is_num(value) and value > 0:
            cell = f'<span class="no">{cell}</span>'
        twin = key.removesuffix("_after") + "_before" if key.endswith("_after") else None
        if twin and ver.get(twin) is not None and value is not None and ver[twin] != value:
            cell = f'<span class="no">{cell}</span> <span class="muted">(changed)</span>'
        rows.append((_label(key), cell))
    body = _kv_table(rows) if rows else '<p class="muted">no data</p>'
    return f'<section id="verification"><h2>Verification</h2>{body}</section>'


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Nested scenario keys as dotted names (vm.memory_mib) with their values."""
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key, child in value.items():
            out += _flatten(f"{prefix}.{key}" if prefix else str(key), child)
        return out
    return [(prefix, _esc(json.dumps(value)) if not isinstance(value, str) else _esc(value))]


def _run_details(result: dict[str, Any]) -> str:
    """Scenario, environment, timeline marks, files and events: the context of the figures."""
    env = [(_label(k), _esc(v)) for k, v in _d(result.get("environment")).items()]
    marks = [(k.replace("_", " "), fmt("x_s", v)) for k, v in _d(result.get("timeline_s")).items()]
    files = []
    for key, value in _d(result.get("files")).items():
        target = str(value)
        local = "://" not in target and not target.startswith(("/", "\\", "javascript:"))
        link = f'<a href="{_esc(target)}">{_esc(target)}</a>' if local else _esc(target)
        files.append((key.replace("_", " "), link))
    scenario = _flatten("", _d(result.get("scenario")))
    events = [e for e in result.get("events", []) if isinstance(e, dict)]
    event_rows = [
        [
            fmt("x_s", e.get("t_s")),
            _esc(e.get("host", "")),
            f"<code>{_esc(e.get('event', ''))}</code>",
            f"<code>{_esc(e.get('name', ''))}</code>",
            f"<code>{_esc(json.dumps(e.get('data', {}), sort_keys=True))}</code>",
        ]
        for e in events
    ]
    return (
        '<section id="scenario"><h2>Run</h2><div class="cols3">'
        f"<div><h3>Scenario</h3>{_kv_table(scenario, 'kv compact')}</div>"
        f"<div><h3>Environment</h3>{_kv_table(env, 'kv compact')}"
        f"<h3>Files</h3>{_kv_table(files, 'kv compact')}</div>"
        f'<div><h3>Timeline <span class="muted small">seconds since the run started</span></h3>'
        f"{_kv_table(marks, 'kv compact')}</div>"
        "</div>"
        f"<details><summary>Hypervisor events ({len(events)})</summary>"
        + _grid_table(
            ["t (s)", "host", "event", "as the backend says", "data"], event_rows, "grid compact"
        )
        + "</details></section>"
    )


# ---------------------------------------------------------------------------------------------
# the time line: series → arrays


@dataclass
class _Series:
    """One series of RUN/series as columns; text columns that happen to be all-empty are read
    as numeric NaN by load_series, so `text()` accepts both."""

    num: dict[str, Array]
    txt: dict[str, list[str]]

    @classmethod
    def load(cls, run_dir: Path, name: str) -> _Series:
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
        return ["" if math.isnan(v) else _plain(float(v)) for v in column]


def _groups(keys: Sequence[str]) -> dict[str, npt.NDArray[np.intp]]:
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


# ---------------------------------------------------------------------------------------------
# the time line: the figure


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
class _Timeline:
    """Builds the stacked time-line figure; each panel method returns whether it drew anything."""

    run_dir: Path
    result: dict[str, Any]
    fig: Any = None
    t0_ns: float = 0.0
    sample_s: float = 0.2
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    host_colour: dict[str, str] = field(default_factory=dict)
    x_range: tuple[float, float] | None = None
    cache: dict[str, _Series] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t0_ns = float(_d(self.result.get("clock")).get("t0_ns") or 0)
        interval = _num(_d(self.result.get("resources")).get("sample_interval_ms"))
        self.sample_s = interval / 1000 if interval else 0.2
        for name, span in _d(_d(self.result.get("phases")).get("windows_s")).items():
            if isinstance(span, list) and len(span) == 2 and all(_is_num(v) for v in span):
                self.windows[str(name)] = (float(span[0]), float(span[1]))
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

    # helpers ---------------------------------------------------------------------------------

    def series(self, name: str) -> _Series:
        """RUN/series/NAME.csv, read once per report."""
        if name not in self.cache:
            self.cache[name] = _Series.load(self.run_dir, name)
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
        return _num(_d(self.result.get("timeline_s")).get("migration_start"))

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
                hovertemplate=f"%{{y:.4g}} {unit}<br>t %{{x:.3f}} s<extra>{_esc(name)}</extra>",
            ),
            secondary,
        )

    # panels ----------------------------------------------------------------------------------

    def latency(self, row: int) -> bool:
        """(a) every request's latency at its intended send time, rolling p50/p99, failures."""
        req = self.series("requests")
        intended, done = req.col("intended_ns"), req.col("done_ns")
        if intended is None or done is None:
            return False
        t = self.seconds(intended)
        latency = (done - intended) / 1e6
        status = req.col("status")
        errors = np.array(req.text("error"), dtype=object)
        bad_status = (
            ~((status >= 200) & (status < 400)) if status is not None else np.zeros(len(t), bool)
        )
        timeout = errors == "timeout"
        failed = ((errors != "") | bad_status) & ~timeout
        ok = ~failed & ~timeout & np.isfinite(latency) & (latency > 0)
        order = np.argsort(t[ok], kind="stable")
        x, y = downsample(t[ok][order], latency[ok][order], body=True)
        self.add(
            row,
            go.Scattergl(
                x=x,
                y=y.astype(np.float32),
                name="request",
                mode="markers",
                marker={"size": 3, "color": "#1f6feb", "opacity": 0.45 if len(x) < 5000 else 0.25},
                hovertemplate="%{y:.3f} ms<br>intended at %{x:.3f} s<extra>request</extra>",
            ),
        )
        centres, (p50, p99), window = rolling_percentiles(t[ok], latency[ok], (50, 99))
        label = f"{window * 1000:.0f} ms" if window < 10 else f"{window:.0f} s"
        self.line(row, centres, p50, f"p50 ({label})", "#1f2328", unit="ms", width=1.8, gl=True)
        self.line(row, centres, p99, f"p99 ({label})", "#d9480f", unit="ms", width=1.8, gl=True)
        timeout_ms = _num(_d(_d(self.result.get("scenario")).get("load")).get("timeout_ms"))
        top = float(np.nanmax(latency[ok])) if np.any(ok) else 1.0
        for mask, name, symbol in ((failed, "error", "x"), (timeout, "timeout", "triangle-up")):
            if not np.any(mask):
                continue
            y_fail = latency[mask].copy()
            fallback = timeout_ms if name == "timeout" and timeout_ms else top
            y_fail[~(np.isfinite(y_fail) & (y_fail > 0))] = fallback
            order = np.argsort(t[mask], kind="stable")
            x_fail, y_fail = downsample(t[mask][order], y_fail[order])
            kind = go.Scatter if len(x_fail) <= 2000 else go.Scattergl  # SVG while it is cheap
            self.add(
                row,
                kind(
                    x=x_fail,
                    y=y_fail,
                    name=f"{name} ({int(np.count_nonzero(mask))})",
                    mode="markers",
                    marker={
                        "symbol": symbol,
                        "size": 10,
                        "color": "#d1242f",
                        "line": {"width": 1.5, "color": "#82071e"},
                    },
                    hovertemplate=f"{name}<br>%{{y:.1f}} ms<br>intended at %{{x:.3f}} s"
                    "<extra></extra>",
                ),
            )
        sla = _num(_d(self.result.get("service")).get("sla_ms"))
        if sla and len(t):
            lo, hi = self.x_range or (float(np.nanmin(t)), float(np.nanmax(t)))
            self.add(
                row,
                go.Scatter(
                    x=[lo, hi],
                    y=[sla, sla],
                    name=f"SLA {_plain(sla)} ms",
                    mode="lines",
                    line={"color": "#6e7781", "dash": "dot", "width": 1},
                    hoverinfo="skip",
                ),
            )
        self.fig.update_yaxes(type="log", dtick=1, row=row, col=1)
        return True

    def probe(self, row: int) -> bool:
        """(b) probe round trips, the silence before each reply (a step), lost probes, and the
        observed downtime shaded."""
        probe = self.series("probe")
        send, recv = probe.col("send_ns"), probe.col("recv_ns")
        if send is None or recv is None:
            return False
        order = np.argsort(send, kind="stable")
        send, recv = send[order], recv[order]
        replied = np.isfinite(recv)
        t_send = self.seconds(send)
        rtt = (recv - send) / 1e6
        x, y = downsample(t_send[replied], rtt[replied], body=True)
        self.add(
            row,
            go.Scattergl(
                x=x,
                y=y.astype(np.float32),
                name="round trip",
                mode="markers",
                marker={"size": 2.5, "color": "rgba(47, 158, 68, 0.5)"},
                hovertemplate="RTT %{y:.3f} ms<br>sent at %{x:.3f} s<extra></extra>",
            ),
        )
        replies = np.sort(self.seconds(recv[replied]))
        if len(replies) >= 2:
            gaps_ms = np.diff(replies) * 1000
            x, y = downsample(replies[1:], gaps_ms)
            self.add(
                row,
                go.Scattergl(
                    x=x,
                    y=y.astype(np.float32),
                    name="gap between replies",
                    mode="lines",
                    line={"color": "#1f6feb", "width": 1.4, "shape": "vh"},
                    hovertemplate="%{y:.1f} ms without a reply<br>until %{x:.3f} s<extra></extra>",
                ),
            )
        lost = t_send[~replied]
        if len(lost):
            interval = _num(_d(self.result.get("service")).get("probe_interval_ms")) or 1.0
            marks = thin_marks(lost)
            self.add(
                row,
                go.Scattergl(
                    x=marks,
                    y=np.full(len(marks), interval, dtype=np.float32),
                    name=f"lost probe ({len(lost)})",
                    mode="markers",
                    marker={
                        "symbol": "line-ns-open",
                        "size": 9,
                        "color": "#d1242f",
                        "line": {"width": 1.2, "color": "#d1242f"},
                    },
                    hovertemplate="lost, sent at %{x:.3f} s<extra></extra>",
                ),
            )
        svc = _d(self.result.get("service"))
        start, width = (
            _num(svc.get("observed_downtime_start_s")),
            _num(svc.get("observed_downtime_ms")),
        )
        if start is not None and width is not None:
            xref, yref = self.refs(row)
            self.fig.add_shape(
                type="rect",
                xref=xref,
                yref=f"{yref} domain",
                x0=start,
                x1=start + width / 1000,
                y0=0,
                y1=1,
                fillcolor="rgba(209, 36, 47, 0.14)",
                line={"width": 0},
                layer="below",
            )
            self.fig.add_annotation(
                xref=xref,
                yref=f"{yref} domain",
                x=start + width / 1000,
                y=0.97,
                xanchor="left",
                yanchor="top",
                showarrow=False,
                text=f"<b>observed downtime {_plain(width, 1)} ms</b>",
                font={"color": "#a40e26", "size": 12},
                bgcolor="rgba(255,255,255,0.8)",
            )
        self.fig.update_yaxes(type="log", dtick=1, row=row, col=1)
        return True

    def migration(self, row: int) -> bool:
        """(c) QEMU's throughput (from transferred bytes if it reported none) and remaining MiB."""
        mig = self.series("migration")
        t_ns = mig.col("t_ns")
        if t_ns is None:
            return False
        t = self.seconds(t_ns)
        order = np.argsort(t, kind="stable")
        t = t[order]
        drew = False
        thr = mig.col("throughput_mbit_s")
        sent = mig.col("transferred_bytes")
        if (thr is None or not np.any(np.isfinite(thr))) and sent is not None and len(t) > 1:
            sent = sent[order]
            thr = np.concatenate([[np.nan], np.diff(sent) * 8 / 1e6 / np.diff(t)])
        elif thr is not None:
            thr = thr[order]
        if thr is not None and np.any(np.isfinite(thr)):
            self.line(row, t, thr, "throughput", "#1f6feb", unit="Mbit/s", width=2)
            drew = True
        remaining = mig.col("remaining_bytes")
        if remaining is not None and np.any(np.isfinite(remaining)):
            self.line(
                row,
                t,
                remaining[order] / MIB,
                "remaining (right axis)",
                "#8250df",
                dash="dash",
                secondary=True,
                unit="MiB",
            )
            self.fig.update_yaxes(
                row=row,
                col=1,
                secondary_y=True,
                rangemode="tozero",
                showgrid=False,
                tickmode="auto",
                ticksuffix=" MiB",
                ticklabelposition="inside",
                tickfont={"color": "#8250df", "size": 10},
            )
            drew = True
        self.fig.update_yaxes(rangemode="tozero", row=row, col=1, secondary_y=False)
        return drew

    def dirty(self, row: int) -> bool:
        """(d) QEMU's dirty-page rate, and where each pre-copy pass started."""
        mig = self.series("migration")
        t_ns, rate = mig.col("t_ns"), mig.col("dirty_rate_mib_s")
        drew = False
        if t_ns is not None and rate is not None and np.any(np.isfinite(rate)):
            t = self.seconds(t_ns)
            order = np.argsort(t, kind="stable")
            self.line(row, t[order], rate[order], "dirty rate", "#c2255c", unit="MiB/s", width=2)
            drew = True
        start = self.migration_start()
        passes = [
            p for p in _d(self.result.get("phases")).get("iterations", []) if isinstance(p, dict)
        ]
        times = [
            float(p["t_s"]) + start for p in passes if start is not None and _is_num(p.get("t_s"))
        ]
        if times:
            self.add(
                row,
                go.Scatter(
                    x=times,
                    y=[0.0] * len(times),
                    name="pass starts",
                    mode="markers+text",
                    text=[f"#{p.get('pass')}" for p in passes][: len(times)],
                    textposition="top center",
                    textfont={"size": 10, "color": "#57606a"},
                    marker={"symbol": "triangle-up", "size": 9, "color": "#57606a"},
                    cliponaxis=False,
                    hovertemplate="pass %{text} starts at %{x:.3f} s<extra></extra>",
                ),
            )
            drew = True
        self.fig.update_yaxes(rangemode="tozero", row=row, col=1)
        return drew

    def _per_host(
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
        for key, index in _groups(keys).items():
            out.setdefault(key.split("\x00", 1)[0], []).append((t[index], values[index]))
        return out

    def cpu(self, row: int) -> bool:
        """(e) CPU per host (all its processes) and per QEMU thread class."""
        drew = False
        per_host = self._per_host("processes", "cpu_s", ("pid", "name"))
        for host in sorted(per_host, key=self._host_order):
            x, y = summed_rate(per_host[host], self.sample_s)
            if len(x) and np.nanmax(y) > 0.0005:
                self.line(row, x, y * 100, host, self.colour(host), unit="%", width=2)
                drew = True
        threads = self.series("threads")
        klass_of = threads.text("thread_class")
        hosts = threads.text("host")
        for host_class, groups in self._per_host_class(threads, hosts, klass_of).items():
            host, klass = host_class
            x, y = summed_rate(groups, self.sample_s)
            if len(x) and np.nanmax(y) > 0.0005:
                self.line(
                    row,
                    x,
                    y * 100,
                    f"{host} QEMU {klass}",
                    self.colour(host),
                    dash=CLASS_DASH.get(klass, "dash"),
                    unit="%",
                    width=1.3,
                )
                drew = True
        self.fig.update_yaxes(rangemode="tozero", row=row, col=1)
        return drew

    def _per_host_class(
        self, threads: _Series, hosts: list[str], classes: list[str]
    ) -> dict[tuple[str, str], list[tuple[Array, Array]]]:
        t_ns, cpu = threads.col("t_ns"), threads.col("cpu_s")
        if t_ns is None or cpu is None:
            return {}
        t = self.seconds(t_ns)
        keys = ["\x00".join(p) for p in zip(hosts, classes, threads.text("tid"), strict=True)]
        out: dict[tuple[str, str], list[tuple[Array, Array]]] = {}
        for key, index in _groups(keys).items():
            host, klass, _ = key.split("\x00")
            out.setdefault((host, klass or "other"), []).append((t[index], cpu[index]))
        order = {k: i for i, k in enumerate(CLASS_DASH)}
        return dict(
            sorted(
                out.items(),
                key=lambda kv: (self._host_order(kv[0][0]), order.get(kv[0][1], 99), kv[0][1]),
            )
        )

    def network(self, row: int) -> bool:
        """(f) uplink sent/received per host."""
        drew = False
        tx = self._per_host("links", "tx_bytes", ())
        rx = self._per_host("links", "rx_bytes", ())
        for host in sorted(set(tx) | set(rx), key=self._host_order):
            for groups, word, dash in (
                (tx.get(host), "sent", "solid"),
                (rx.get(host), "received", "dot"),
            ):
                if not groups:
                    continue
                x, y = summed_rate(groups, self.sample_s)
                if len(x):
                    self.line(
                        row,
                        x,
                        y * 8 / 1e6,
                        f"{host} {word}",
                        self.colour(host),
                        dash=dash,
                        unit="Mbit/s",
                    )
                    drew = True
        self.fig.update_yaxes(rangemode="tozero", row=row, col=1)
        return drew

    def disk(self, row: int) -> bool:
        """(g) block IO per host, summed over its processes."""
        drew = False
        read = self._per_host("processes", "read_bytes", ("pid", "name"))
        write = self._per_host("processes", "write_bytes", ("pid", "name"))
        for host in sorted(set(read) | set(write), key=self._host_order):
            for groups, word, dash in (
                (read.get(host), "read", "solid"),
                (write.get(host), "written", "dash"),
            ):
                if not groups:
                    continue
                x, y = summed_rate(groups, self.sample_s)
                if len(x) and np.nanmax(y) > 0:
                    self.line(
                        row,
                        x,
                        y / MIB,
                        f"{host} {word}",
                        self.colour(host),
                        dash=dash,
                        unit="MiB/s",
                    )
                    drew = True
        self.fig.update_yaxes(rangemode="tozero", row=row, col=1)
        return drew

    def rss(self, row: int) -> bool:
        """(h) resident memory of QEMU per host."""
        series = self.series("processes")
        t_ns, rss = series.col("t_ns"), series.col("rss_bytes")
        if t_ns is None or rss is None:
            return False
        names = series.text("name")
        hosts = series.text("host")
        keys = [f"{h}\x00{p}" for h, p in zip(hosts, series.text("pid"), strict=True)]
        qemu = np.array(["qemu" in n.lower() for n in names], dtype=bool)
        t = self.seconds(t_ns)
        per_host: dict[str, list[tuple[Array, Array]]] = {}
        for key, index in _groups(keys).items():
            index = index[qemu[index]]
            if len(index):
                per_host.setdefault(key.split("\x00", 1)[0], []).append((t[index], rss[index]))
        drew = False
        for host in sorted(per_host, key=self._host_order):
            x, y = summed_level(per_host[host], self.sample_s)
            if len(x):
                self.line(row, x, y / MIB, f"{host} QEMU", self.colour(host), unit="MiB", width=2)
                drew = True
        self.fig.update_yaxes(rangemode="tozero", row=row, col=1)
        return drew

    @staticmethod
    def _host_order(host: str) -> tuple[int, str]:
        order = list(HOST_COLOURS)
        return (order.index(host) if host in order else len(order), host)

    # layout ----------------------------------------------------------------------------------

    def refs(self, row: int) -> tuple[str, str]:
        """The x and (primary) y axis references of a panel, e.g. ("x3", "y4")."""
        subplot = self.fig.get_subplot(row, 1)
        x = subplot.xaxis.plotly_name.replace("xaxis", "x")
        y = subplot.yaxis.plotly_name.replace("yaxis", "y")
        return x, y

    def domain(self, row: int) -> tuple[float, float]:
        subplot = self.fig.get_subplot(row, 1)
        lo, hi = subplot.yaxis.domain
        return float(lo), float(hi)

    def decorate(self, drawn: Sequence[bool]) -> None:
        """Phase bands and moment lines on every panel, per-panel legends, "no data" notes."""
        start = self.migration_start()
        phases = _d(self.result.get("phases"))
        moments = [
            (float(phases[key]) + start, label, colour, dash)
            for key, label, colour, dash in MOMENTS
            if start is not None and _num(phases.get(key)) is not None
        ] + [
            (float(a["t_s"]), str(a.get("action")), *ACTION_LINE)
            for a in _d(self.result.get("migration")).get("actions", [])
            if isinstance(a, dict) and _num(a.get("t_s")) is not None
        ]
        for row, (_, _, y_title) in enumerate(ROWS, start=1):
            xref, yref = self.refs(row)
            for name, (a, b) in self.windows.items():
                self.fig.add_shape(
                    type="rect",
                    xref=xref,
                    yref=f"{yref} domain",
                    x0=a,
                    x1=b,
                    y0=0,
                    y1=1,
                    fillcolor=WINDOW_FILL.get(name, ("rgba(110,119,129,0.08)", ""))[0],
                    line={"width": 0},
                    layer="below",
                )
            for t, _, colour, dash in moments:
                self.fig.add_shape(
                    type="line",
                    xref=xref,
                    yref=f"{yref} domain",
                    x0=t,
                    x1=t,
                    y0=0,
                    y1=1,
                    line={"color": colour, "dash": dash, "width": 1.3},
                    layer="above",
                )
            hi = self.domain(row)[1]
            self.fig.update_layout(
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
            self.fig.update_yaxes(
                title_text=y_title, title_font={"size": 11}, row=row, col=1, secondary_y=False
            )
            if not drawn[row - 1]:
                # plotly.js lays out only the subplots some trace uses: give it an invisible one
                lo_x, hi_x = self.x_range or (0.0, 1.0)
                self.add(
                    row,
                    go.Scatter(
                        x=[lo_x, hi_x], y=[0, 1], mode="none", showlegend=False, hoverinfo="skip"
                    ),
                )
                self.fig.add_annotation(
                    xref=f"{xref} domain",
                    yref=f"{yref} domain",
                    x=0.5,
                    y=0.5,
                    showarrow=False,
                    text="no data",
                    font={"size": 16, "color": "#8c959f"},
                )
                self.fig.update_yaxes(showticklabels=False, row=row, col=1)
        # window names inside the top panel
        xref, yref = self.refs(1)
        for name, (a, b) in self.windows.items():
            self.fig.add_annotation(
                xref=xref,
                yref=f"{yref} domain",
                x=(a + b) / 2,
                y=1.0,
                yanchor="top",
                showarrow=False,
                text=f"<b>{_esc(name)}</b>",
                font={"size": 11, "color": "#57606a"},
            )
        self.fig.update_xaxes(
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
        if self.x_range:
            self.fig.update_xaxes(range=list(self.x_range), autorange=False)
        self.fig.update_xaxes(title_text="seconds since the run started", row=len(ROWS), col=1)
        self.fig.update_yaxes(gridcolor="#eaeef2", zeroline=False)
        for annotation in self.fig.layout.annotations[: len(ROWS)]:  # the panel titles
            annotation.update(x=0, xanchor="left", font={"size": 13, "color": "#1f2328"})
        self.fig.update_layout(
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

    def build(self) -> Any:
        """Every panel (a failing one says why instead of breaking the report), decorated."""
        panels: dict[str, Callable[[int], bool]] = {
            "latency": self.latency,
            "probe": self.probe,
            "migration": self.migration,
            "dirty": self.dirty,
            "cpu": self.cpu,
            "network": self.network,
            "disk": self.disk,
            "rss": self.rss,
        }
        drawn = []
        for row, (key, _, _) in enumerate(ROWS, start=1):
            try:
                drawn.append(panels[key](row))
            except (ValueError, KeyError, IndexError, TypeError) as exc:  # a malformed series
                drawn.append(False)
                xref, yref = self.refs(row)
                self.fig.add_annotation(
                    xref=f"{xref} domain",
                    yref=f"{yref} domain",
                    x=0.5,
                    y=0.2,
                    showarrow=False,
                    text=f"could not draw: {_esc(exc)}",
                    font={"size": 11, "color": "#a40e26"},
                )
        self.decorate(drawn)
        return self.fig


def timeline_html(run_dir: Path, result: dict[str, Any]) -> str:
    """The time-line figure as an HTML fragment (plotly.js itself not included)."""
    figure = _Timeline(run_dir, result).build()
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


# ---------------------------------------------------------------------------------------------
# the page


CSS = """
:root { --ok:#1a7f37; --ok-bg:#dafbe1; --fail:#d1242f; --fail-bg:#ffebe9; --na:#6e7781;
  --na-bg:#eaeef2; --warn:#9a6700; --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1560px; margin: 0 auto; padding: 16px 20px 40px; }
header { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; }
.title { display: flex; align-items: center; gap: 14px; }
h1 { font-size: 24px; margin: 0; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: var(--muted); }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; margin-top: 8px; }
.muted { color: var(--muted); font-weight: normal; }
.small { font-size: 12px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 600;
  font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.badge.outcome { font-size: 14px; padding: 3px 14px; }
.badge.ok, .badge.check-ok { background: var(--ok); color: #fff; }
.badge.fail, .badge.check-fail { background: var(--fail); color: #fff; }
.badge.warn { background: var(--warn); color: #fff; }
.badge.check-na { background: var(--na); color: #fff; }
.error { margin-top: 10px; background: var(--fail-bg); border: 1px solid #ff8182;
  border-radius: 6px; padding: 8px 12px; color: #82071e; }
.error pre { margin: 4px 0 0; white-space: pre-wrap; font-size: 13px; }
.banner { margin-top: 12px; background: var(--fail-bg); border: 1px solid #ff8182; color: #82071e;
  border-radius: 8px; padding: 10px 14px; font-size: 15px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px;
  margin-top: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .05em; }
.card .v { font-size: 20px; font-weight: 650; margin: 2px 0; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.card .sub { color: var(--muted); font-size: 12px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px;
  margin-top: 14px; }
.sections3 { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr));
  gap: 0 14px; align-items: start; }
.cols3 { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr));
  gap: 4px 28px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 5px 10px; border-bottom: 1px solid #eaeef2; text-align: left;
  vertical-align: top; }
table.kv th { font-weight: normal; color: var(--muted); width: 48%; }
table.kv td { font-variant-numeric: tabular-nums; }
table.compact th, table.compact td { padding: 2px 8px; font-size: 12px; }
table.grid thead th { font-size: 12px; color: var(--muted); font-weight: 600;
  border-bottom: 2px solid var(--line); }
table.numbers td, table.numbers th { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
table.numbers td:first-child, table.numbers th:first-child { text-align: left; }
table.hosts td { white-space: normal; }
table.hosts th:not(:first-child) { text-transform: capitalize; }
.extra { display: block; color: var(--muted); font-size: 12px; }
.yes { color: var(--ok); font-weight: 600; }
.no { color: var(--fail); font-weight: 600; }
tr.check-ok td:first-child { border-left: 4px solid var(--ok); }
tr.check-fail { background: var(--fail-bg); }
tr.check-fail td:first-child { border-left: 4px solid var(--fail); }
tr.check-na td:first-child { border-left: 4px solid var(--na); }
tr.check-na { color: var(--muted); }
table.checks td:first-child { width: 70px; }
.chip { display: inline-block; background: var(--bg); border: 1px solid #eaeef2; border-radius: 6px;
  padding: 1px 8px; margin: 2px 4px 2px 0; font-size: 12px; font-variant-numeric: tabular-nums; }
tr.check-fail .chip { background: #fff; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
#timeline { padding: 10px 8px 4px; }
#timeline h2, #timeline .legend-note { margin-left: 10px; }
.legend-note { color: var(--muted); font-size: 12px; margin-bottom: 4px; }
.swatch { display: inline-block; width: 14px; height: 10px; border-radius: 2px;
  margin: 0 4px 0 12px; vertical-align: middle; border: 1px solid rgba(0,0,0,.08); }
details summary { cursor: pointer; color: var(--muted); margin-top: 12px; }
footer { color: var(--muted); font-size: 12px; margin-top: 16px; text-align: center; }
"""


def _timeline_section(fragment: str, result: dict[str, Any]) -> str:
    """The figure under a key to its shaded windows and vertical moment lines."""
    windows = _d(_d(result.get("phases")).get("windows_s"))
    swatches = "".join(
        f'<span class="swatch" style="background:{swatch}"></span>{name}'
        + (
            f' <span class="muted">{_plain(float(span[0]), 2)}&ndash;'
            f"{_plain(float(span[1]), 2)} s</span>"
            if isinstance(span := windows.get(name), list) and len(span) == 2
            else ""
        )
        for name, (_, swatch) in WINDOW_FILL.items()
    )
    phases = _d(result.get("phases"))
    moments = "".join(
        f'<span class="swatch" style="background:{colour};height:3px;border:0"></span>{label}'
        + (
            f' <span class="muted">+{_plain(at, 3)} s</span>'
            if (at := _num(phases.get(key))) is not None
            else ""
        )
        for key, label, colour, _ in MOMENTS
    )
    actions = "".join(
        f'<span class="swatch" style="background:{ACTION_LINE[0]};height:3px;border:0"></span>'
        f'{_esc(a.get("action"))} <span class="muted">{_plain(float(a["t_s"]), 2)} s</span>'
        for a in _d(result.get("migration")).get("actions", [])
        if isinstance(a, dict) and _num(a.get("t_s")) is not None
    )
    actions_note = (
        f'<div class="legend-note">orchestrator actions:{actions}</div>' if actions else ""
    )
    return (
        '<section id="timeline"><h2>Time line <span class="muted small">drag to zoom, '
        "double-click to reset; every panel shares the time axis (seconds since the run "
        "started)</span></h2>"
        f'<div class="legend-note">windows:{swatches}</div>'
        f'<div class="legend-note">moments, after the migration started:{moments}</div>'
        f"{actions_note}{fragment}</section>"
    )


def render_html(run_dir: Path, result: dict[str, Any]) -> str:
    """The whole page as a string (plotly.js inlined)."""
    banner, checks = _checks(result)
    name = _d(result.get("scenario")).get("name", "run")
    body = (
        _header(result, run_dir)
        + banner
        + _cards(result)
        + checks
        + _preflight(result)
        + _timeline_section(timeline_html(run_dir, result), result)
        + '<div class="sections3">'
        + _migration(result)
        + _data(result)
        + _verification(result)
        + "</div>"
        + _service(result)
        + _resources(result)
        + _run_details(result)
    )
    plotly_js = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>vmigrate · {_esc(name)} · {_esc(result.get('outcome', ''))}</title>"
        f"<style>{CSS}</style>"
        f"<script>{plotly_js}</script>"
        f"</head><body><main>{body}"
        f"<footer>vmigrate report of {_esc(run_dir.name)} · figures from result.json, time line "
        "from series/*.csv</footer></main></body></html>\n"
    )


def render_report(run_dir: Path) -> Path:
    """Write RUN/report.html from RUN/result.json and RUN/series; return its path."""
    result = json.loads((run_dir / RESULT_FILE).read_text())
    page = render_html(run_dir, result)
    path = run_dir / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
