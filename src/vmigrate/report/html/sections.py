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
    num,
    obj,
    plain,
)
from vmigrate.report.html.style import MOMENTS, WINDOW_NAMES


def migration_html(result: dict[str, Any]) -> str:
    """Times, downtime reported vs observed, bytes, passes, throughput, and its moments."""
    mig = obj(result.get("migration"))
    svc = obj(result.get("service"))
    phases = obj(result.get("phases"))
    ram = num(mig.get("guest_ram_bytes"))
    sent = num(mig.get("transferred_bytes"))
    share = (
        f' <span class="muted">({plain(100 * sent / ram, 1)} % of guest RAM)</span>'
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
            f"orchestrator at {plain(float(a['t_s']), 2)} s",
            esc(a.get("action")) + ' <span class="muted">(since the run started)</span>',
        )
        for a in mig.get("actions", [])
        if isinstance(a, dict) and num(a.get("t_s")) is not None
    ]
    moments = [
        (f"{label} at", fmt("x_s", phases.get(key)) + ' <span class="muted">after the start</span>')
        for key, label, _, _ in MOMENTS
    ]
    if passes:
        moments.append(
            (
                "passes started at",
                ", ".join(f"#{esc(p.get('pass'))} {fmt('x_s', p.get('t_s'))}" for p in passes),
            )
        )
    return (
        '<section id="migration"><h2>Migration</h2>'
        + kv_table(rows)
        + '<h3>Moments <span class="muted small">seconds since the migration started</span></h3>'
        + kv_table(moments)
        + "</section>"
    )


def service_html(result: dict[str, Any]) -> str:
    """Latency per window, requests, SLA violations, probe figures."""
    svc = obj(result.get("service"))
    lat = obj(svc.get("latency_ms"))
    rps = obj(svc.get("throughput_rps"))
    windows = list(WINDOW_NAMES) + [w for w in lat if w not in WINDOW_NAMES]
    header = ["window", "requests", "p50", "p90", "p99", "p99.9", "max", "mean", "throughput"]
    rows = []
    for window in windows:
        stats = obj(lat.get(window))
        rows.append(
            [f"<b>{esc(window)}</b>", fmt("count", stats.get("count"))]
            + [fmt("x_ms", stats.get(k)) for k in ("p50", "p90", "p99", "p999", "max", "mean")]
            + [fmt("x_rps", rps.get(window))]
        )
    req = obj(svc.get("requests"))
    sla = obj(svc.get("sla_violations"))
    requests = [(figure_label(k), fmt(k, v)) for k, v in req.items()]
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
    probe += [(figure_label(k), fmt(k, v)) for k, v in svc.items() if k not in known]
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


def _window_cell(figures: Any, render: Callable[[Any], str]) -> str:
    """`during` big, `extra` (over what the baseline rate predicts) small, signed."""
    fig = obj(figures)
    during, extra = fig.get("during"), fig.get("extra")
    if during is None and extra is None:
        return '<span class="muted">—</span>'
    extra_html = ""
    if extra is not None and is_num(extra):
        sign = "+" if extra >= 0 else MINUS
        extra_html = f' <span class="extra">{sign}{render(abs(extra))} extra</span>'
    return f"{render(during)}{extra_html}"


def resources_html(result: dict[str, Any]) -> str:
    """One column per host: CPU (total, baseline, peak, QEMU by thread class), network, disk,
    RSS; totals over the migration window with what they cost above the baseline."""
    res = obj(result.get("resources"))
    hosts = obj(res.get("hosts"))
    if not hosts:
        return '<section id="resources"><h2>Resources</h2><p class="muted">no data</p></section>'
    names = list(hosts)

    def cpu_s(v: Any) -> str:
        return fmt("x_s", v)

    def size(v: Any) -> str:
        return fmt("x_bytes", v)

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> list[str]:
        return [f"<b>{esc(label)}</b>"] + [cell(obj(hosts[h])) for h in names]

    def window(
        key: str, render: Callable[[Any], str], sub: str | None = None
    ) -> Callable[..., str]:
        """A cell: figures `key` (or `key`.`sub`) of a host, as during + extra."""

        def cell(host: dict[str, Any]) -> str:
            figures = obj(host.get(key)).get(sub) if sub else host.get(key)
            return _window_cell(figures, render)

        return cell

    def rss(which: str) -> Callable[..., str]:
        return lambda host: size(obj(host.get("rss_bytes")).get(which))

    rows = [
        row("CPU during the migration", window("cpu_seconds", cpu_s)),
        row(
            "CPU in the baseline",
            lambda h: (
                fmt("x_pct", 100 * v) + ' <span class="muted">of a core</span>'
                if (v := num(obj(h.get("cpu_seconds")).get("baseline_rate"))) is not None
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
        for klass in obj(obj(hosts[h]).get("qemu_cpu_seconds")):
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
        + grid_table(["", *names], rows, "grid numbers hosts")
        + "</section>"
    )


def data_html(result: dict[str, Any]) -> str:
    """The data section, every figure with its unit."""
    data = obj(result.get("data"))
    rows = [(figure_label(k), fmt(k, v)) for k, v in data.items()]
    body = kv_table(rows) if rows else '<p class="muted">no data</p>'
    return f'<section id="data"><h2>Data moved</h2>{body}</section>'


def verification_html(result: dict[str, Any]) -> str:
    """Where the VM runs and whether it is intact; a mismatch or a change in red."""
    ver = obj(result.get("verification"))
    rows = []
    for key, value in ver.items():
        cell = fmt(key, value)
        if key == "working_set_pages_mismatched" and is_num(value) and value > 0:
            cell = f'<span class="no">{cell}</span>'
        twin = key.removesuffix("_after") + "_before" if key.endswith("_after") else None
        if twin and ver.get(twin) is not None and value is not None and ver[twin] != value:
            cell = f'<span class="no">{cell}</span> <span class="muted">(changed)</span>'
        rows.append((figure_label(key), cell))
    body = kv_table(rows) if rows else '<p class="muted">no data</p>'
    return f'<section id="verification"><h2>Verification</h2>{body}</section>'


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Nested scenario keys as dotted names (vm.memory_mib) with their values."""
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key, child in value.items():
            out += _flatten(f"{prefix}.{key}" if prefix else str(key), child)
        return out
    return [(prefix, esc(json.dumps(value)) if not isinstance(value, str) else esc(value))]


def run_details_html(result: dict[str, Any]) -> str:
    """Scenario, environment, timeline marks, files and events: the context of the figures."""
    env = [(figure_label(k), esc(v)) for k, v in obj(result.get("environment")).items()]
    marks = [(k.replace("_", " "), fmt("x_s", v)) for k, v in obj(result.get("timeline_s")).items()]
    files = []
    for key, value in obj(result.get("files")).items():
        target = str(value)
        local = "://" not in target and not target.startswith(("/", "\\", "javascript:"))
        link = f'<a href="{esc(target)}">{esc(target)}</a>' if local else esc(target)
        files.append((key.replace("_", " "), link))
    scenario = _flatten("", obj(result.get("scenario")))
    events = [e for e in result.get("events", []) if isinstance(e, dict)]
    event_rows = [
        [
            fmt("x_s", e.get("t_s")),
            esc(e.get("host", "")),
            f"<code>{esc(e.get('event', ''))}</code>",
            f"<code>{esc(e.get('name', ''))}</code>",
            f"<code>{esc(json.dumps(e.get('data', {}), sort_keys=True))}</code>",
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
