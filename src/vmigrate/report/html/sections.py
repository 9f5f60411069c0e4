"""The detail sections of the report: migration, service, resources, data moved,
verification, and the run's context."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from vmigrate.report.html.formatting import (
    MINUS,
    TIMES,
    esc,
    figure_label,
    fmt,
    grid_table,
    is_num,
    kv_table,
    plain,
)
from vmigrate.report.html.style import MOMENTS, WINDOW_NAMES
from vmigrate.result import Result
from vmigrate.result.base import WindowFigures
from vmigrate.result.resources import HostResources


def migration_html(result: Result) -> str:
    """Times, downtime reported vs observed, bytes, passes, throughput, and its moments."""
    mig, svc, phases = result.migration, result.service, result.phases
    ram, sent = mig.guest_ram_bytes, mig.transferred_bytes
    share = (
        f' <span class="muted">({plain(100 * sent / ram, 1)} % of guest RAM)</span>' if ram else ""
    )
    rows = [
        ("strategy", fmt("strategy", mig.strategy)),
        ("total time", fmt("total_time_s", mig.total_time_s)),
        ("setup time", fmt("setup_time_s", mig.setup_time_s)),
        ("downtime reported (hypervisor)", fmt("downtime_reported_ms", mig.downtime_reported_ms)),
        (
            "downtime observed (probe)",
            fmt("observed_downtime_ms", svc.observed_downtime_ms)
            + f' <span class="muted">± {fmt("x_ms", svc.probe_interval_ms)}</span>',
        ),
        ("transferred", fmt("transferred_bytes", sent) + share),
        ("remaining at the end", fmt("remaining_bytes", mig.remaining_bytes)),
        ("iterations (pre-copy passes)", fmt("iterations", mig.iterations)),
        ("average throughput", fmt("throughput_mbit_s", mig.throughput_mbit_s)),
        ("guest RAM", fmt("guest_ram_bytes", ram)),
        ("progress samples", fmt("progress_samples", mig.progress_samples)),
        ("attempts", fmt("attempts", mig.attempts)),
    ]
    rows += [
        (
            f"orchestrator at {plain(a.t_s, 2)} s",
            esc(a.action) + ' <span class="muted">(since the run started)</span>',
        )
        for a in mig.actions
    ]
    moments = [
        (
            f"{label} at",
            fmt("x_s", getattr(phases, key)) + ' <span class="muted">after the start</span>',
        )
        for key, label, _, _ in MOMENTS
    ]
    if phases.iterations:
        moments.append(
            (
                "passes started at",
                ", ".join(f"#{p.pass_} {fmt('x_s', p.t_s)}" for p in phases.iterations),
            )
        )
    return (
        '<section id="migration"><h2>Migration</h2>'
        + kv_table(rows)
        + '<h3>Moments <span class="muted small">seconds since the migration started</span></h3>'
        + kv_table(moments)
        + "</section>"
    )


def service_html(result: Result) -> str:
    """Latency per window, requests, SLA violations, probe figures."""
    svc = result.service
    lat, rps = svc.latency_ms, svc.throughput_rps
    windows = list(WINDOW_NAMES) + [w for w in lat if w not in WINDOW_NAMES]
    header = ["window", "requests", "p50", "p90", "p99", "p99.9", "max", "mean", "throughput"]
    rows = []
    for window in windows:
        stats = lat.get(window)
        rows.append(
            [f"<b>{esc(window)}</b>", fmt("count", stats.count if stats else None)]
            + [
                fmt("x_ms", getattr(stats, k) if stats else None)
                for k in ("p50", "p90", "p99", "p999", "max", "mean")
            ]
            + [fmt("x_rps", rps.get(window))]
        )
    sla = svc.sla_violations
    requests = [(figure_label(k), fmt(k, v)) for k, v in svc.requests.model_dump().items()]
    violations = [
        ("SLA", fmt("sla_ms", svc.sla_ms)),
        ("slower than the SLA (migration window)", fmt("over_sla", sla.over_sla)),
        (
            f"slower than 2 {TIMES} baseline p99",
            fmt("x", sla.over_2x_baseline_p99)
            + ' <span class="muted">(baseline p99 '
            + f"{fmt('x_ms', sla.baseline_p99_ms)})</span>",
        ),
    ]
    probe = [
        ("interval", fmt("probe_interval_ms", svc.probe_interval_ms)),
        ("sent during the migration", fmt("probe_sent", svc.probe_sent)),
        ("lost during the migration", fmt("probe_lost", svc.probe_lost)),
        ("longest gap between replies", fmt("observed_downtime_ms", svc.observed_downtime_ms)),
        (
            "gap started at",
            fmt("x_s", svc.observed_downtime_start_s)
            + ' <span class="muted">since the run started</span>',
        ),
        (
            figure_label("probe_replies_after_migration"),
            fmt("probe_replies_after_migration", svc.probe_replies_after_migration),
        ),
    ]
    return (
        '<section id="service"><h2>Service <span class="muted small">as the client saw it; '
        "latency from each request's intended send time</span></h2>"
        + grid_table(header, rows, "grid numbers")
        + '<div class="cols3">'
        + f"<div><h3>Requests</h3>{kv_table(requests)}</div>"
        + f"<div><h3>SLA violations</h3>{kv_table(violations)}</div>"
        + f"<div><h3>Probe (UDP echo)</h3>{kv_table(probe)}</div>"
        + "</div></section>"
    )


def _window_cell(figures: WindowFigures | None, render: Callable[[Any], str]) -> str:
    """`during` big, `extra` (over what the baseline rate predicts) small, signed."""
    during = figures.during if figures else None
    extra = figures.extra if figures else None
    if during is None and extra is None:
        return '<span class="muted">—</span>'
    extra_html = ""
    if extra is not None:
        sign = "+" if extra >= 0 else MINUS
        extra_html = f' <span class="extra">{sign}{render(abs(extra))} extra</span>'
    return f"{render(during)}{extra_html}"


HostCell = Callable[[HostResources], str]  # one host's cell of a row


def _cpu_s(value: Any) -> str:
    """CPU-seconds as the report writes them."""
    return fmt("x_s", value)


def _size(value: Any) -> str:
    """Bytes as the report writes them."""
    return fmt("x_bytes", value)


def _window(key: str, render: Callable[[Any], str]) -> HostCell:
    """A cell: the host's figures `key`, as during + extra."""
    return lambda host: _window_cell(getattr(host, key), render)


def _rss(which: str) -> HostCell:
    """A cell: the resident memory of the host's processes before, at peak or after."""
    return lambda host: _size(getattr(host.rss_bytes, which))


def _qemu(klass: str) -> HostCell:
    """A cell: the host's QEMU CPU of one thread class, as during + extra."""
    return lambda host: _window_cell(host.qemu_cpu_seconds.get(klass), _cpu_s)


def _baseline(host: HostResources) -> str:
    """A cell: the host's CPU rate in the baseline window, as a share of one core."""
    rate = host.cpu_seconds.baseline_rate
    if rate is None:
        return fmt("x", None)
    return fmt("x_pct", 100 * rate) + ' <span class="muted">of a core</span>'


def _cpu_peak(host: HostResources) -> str:
    """A cell: the host's highest CPU sample, as a share of one core."""
    return fmt("x_pct", host.cpu_pct_peak) + ' <span class="muted">of a core</span>'


def _resource_cells(hosts: dict[str, HostResources]) -> list[tuple[str, HostCell]]:
    """Every row of the resources table: its label and how to fill a host's cell, in order."""
    cells: list[tuple[str, HostCell]] = [
        ("CPU during the migration", _window("cpu_seconds", _cpu_s)),
        ("CPU in the baseline", _baseline),
        ("CPU peak", _cpu_peak),
    ]
    classes: list[str] = []
    for h in hosts:
        classes += [klass for klass in hosts[h].qemu_cpu_seconds if klass not in classes]
    cells += [(f"QEMU CPU, {klass} threads", _qemu(klass)) for klass in classes]
    for key, label in (
        ("net_tx_bytes", "network sent"),
        ("net_rx_bytes", "network received"),
        ("disk_read_bytes", "disk read"),
        ("disk_write_bytes", "disk written"),
    ):
        cells.append((label, _window(key, _size)))
    for key, label in (("before", "before"), ("peak", "peak during"), ("after", "after")):
        cells.append((f"RSS {label}", _rss(key)))
    cells.append(("processes", lambda h: fmt("processes", h.processes)))
    return cells


def resources_html(result: Result) -> str:
    """One column per host: CPU (total, baseline, peak, QEMU by thread class), network, disk,
    RSS; totals over the migration window with what they cost above the baseline."""
    hosts = result.resources.hosts
    if not hosts:
        return '<section id="resources"><h2>Resources</h2><p class="muted">no data</p></section>'
    names = list(hosts)
    rows = [
        [f"<b>{esc(label)}</b>"] + [cell(hosts[h]) for h in names]
        for label, cell in _resource_cells(hosts)
    ]
    interval = result.resources.sample_interval_ms
    return (
        '<section id="resources"><h2>Resources per host <span class="muted small">totals over the '
        "migration window; <i>extra</i> = above what the baseline rate predicts for the same "
        f"time; sampled every {fmt('x_ms', interval)}</span></h2>"
        + grid_table(["", *names], rows, "grid numbers hosts")
        + "</section>"
    )


def data_html(result: Result) -> str:
    """The data section, every figure with its unit."""
    rows = [(figure_label(k), fmt(k, v)) for k, v in result.data.model_dump().items()]
    return f'<section id="data"><h2>Data moved</h2>{kv_table(rows)}</section>'


def verification_html(result: Result) -> str:
    """Where the VM runs and whether it is intact; a mismatch or a change in red."""
    ver = result.verification.model_dump()  # the keys the document has, in its order
    rows = []
    for key, value in ver.items():
        cell = fmt(key, value)
        if key == "working_set_pages_mismatched" and is_num(value) and value > 0:
            cell = f'<span class="no">{cell}</span>'
        twin = key.removesuffix("_after") + "_before" if key.endswith("_after") else None
        if twin and ver.get(twin) is not None and value is not None and ver[twin] != value:
            cell = f'<span class="no">{cell}</span> <span class="muted">(changed)</span>'
        rows.append((figure_label(key), cell))
    return f'<section id="verification"><h2>Verification</h2>{kv_table(rows)}</section>'


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Nested scenario keys as dotted names (vm.memory_mib) with their values."""
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key, child in value.items():
            out += _flatten(f"{prefix}.{key}" if prefix else str(key), child)
        return out
    return [(prefix, esc(json.dumps(value)) if not isinstance(value, str) else esc(value))]


def run_details_html(result: Result) -> str:
    """Scenario, environment, timeline marks, files and events: the context of the figures."""
    env = [(figure_label(k), esc(v)) for k, v in result.environment.model_dump().items()]
    marks = [(k.replace("_", " "), fmt("x_s", v)) for k, v in result.timeline_s.items()]
    files = []
    for key, value in result.files.items():
        target = str(value)
        local = "://" not in target and not target.startswith(("/", "\\", "javascript:"))
        link = f'<a href="{esc(target)}">{esc(target)}</a>' if local else esc(target)
        files.append((key.replace("_", " "), link))
    scenario = _flatten("", result.scenario)
    events = result.events
    event_rows = [
        [
            fmt("x_s", e.t_s),
            esc(e.host),
            f"<code>{esc(e.event.value)}</code>",
            f"<code>{esc(e.name)}</code>",
            f"<code>{esc(json.dumps(e.data, sort_keys=True))}</code>",
        ]
        for e in events
    ]
    return (
        '<section id="scenario"><h2>Run</h2><div class="cols3">'
        f"<div><h3>Scenario</h3>{kv_table(scenario, 'kv compact')}</div>"
        f"<div><h3>Environment</h3>{kv_table(env, 'kv compact')}"
        f"<h3>Files</h3>{kv_table(files, 'kv compact')}</div>"
        f'<div><h3>Timeline <span class="muted small">seconds since the run started</span></h3>'
        f"{kv_table(marks, 'kv compact')}</div>"
        "</div>"
        f"<details><summary>Hypervisor events ({len(events)})</summary>"
        + grid_table(
            ["t (s)", "host", "event", "as the backend says", "data"], event_rows, "grid compact"
        )
        + "</details></section>"
    )
