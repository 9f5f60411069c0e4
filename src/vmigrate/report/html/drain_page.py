"""The drain's report page: DRAIN_DIR/report.html from drain.json and DRAIN_DIR/series. One
time line (seconds since the first release): a Gantt of the migrations, each guest's planned
bar beside its measured one, over the hosts' uplinks as the drain's sampler saw them; then the
guests' figures against the plan, the hosts' bill, and what the plan was made from. Built with
the single-run report's shell (its CSS, plotly inlined, its helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from plotly.subplots import make_subplots

from vmigrate.drain.bill import DrainBill, DrainOutcome, VmBill
from vmigrate.measure.recorder import load_series
from vmigrate.report.html.formatting import esc, fmt, grid_table, kv_table, plain
from vmigrate.report.html.style import CSS, HOST_COLOURS, SPARE_COLOURS

REPORT_FILE = "report.html"
OUTCOME = {DrainOutcome.COMPLETED: "ok", DrainOutcome.INCOMPLETE: "fail",
           DrainOutcome.FAILED: "fail", DrainOutcome.INTERRUPTED: "warn"}  # fmt: skip
BAR_PX = 34
PLANNED = "planned"  # the legend group of every planned bar
PLANNED_FILL, PLANNED_EDGE = "rgba(0,0,0,0.06)", "#6e7781"


def _colours(bill: DrainBill) -> dict[str, str]:
    """One colour per testbed host, the same in every panel."""
    names = [bill.drained_host, *bill.receivers, "storage"]
    spare = iter(SPARE_COLOURS * 4)
    return {name: HOST_COLOURS.get(name) or next(spare) for name in names}


def _gantt(fig: go.Figure, bill: DrainBill, colour: dict[str, str]) -> None:
    """Row 1: per guest a planned bar (pale, outlined) and the measured one (solid). The bars
    stay out of the legend: the planned ones are toggled by its "planned" key, the measured
    ones by their destination's (see _legend)."""
    for vm in bill.vms:
        label = vm.name
        planned = vm.predicted
        if planned is not None and planned.start_s is not None and planned.end_s is not None:
            fig.add_trace(
                go.Bar(
                    y=[label], x=[planned.end_s - planned.start_s], base=[planned.start_s],
                    orientation="h", name="planned", legendgroup=PLANNED,
                    showlegend=False, offsetgroup="planned",
                    marker={"color": PLANNED_FILL,
                            "line": {"color": colour.get(planned.destination_host, "#888"),
                                     "width": 1.5}},
                    hovertemplate=f"{esc(label)} planned → {esc(planned.destination_host)}<br>"
                    "from %{base:.2f} s, %{x:.2f} s long<extra></extra>",
                ),
                row=1, col=1,
            )  # fmt: skip
        if vm.start_s is not None and vm.end_s is not None:
            host = vm.destination_host or "?"
            fig.add_trace(
                go.Bar(
                    y=[label], x=[max(vm.end_s - vm.start_s, 0.01)], base=[vm.start_s],
                    orientation="h", name=f"→ {host}", legendgroup=host, showlegend=False,
                    offsetgroup="measured", marker={"color": colour.get(host, "#888")},
                    hovertemplate=f"{esc(label)} → {esc(host)}: {esc(vm.outcome or '')}<br>"
                    "from %{base:.2f} s, %{x:.2f} s<extra></extra>",
                ),
                row=1, col=1,
            )  # fmt: skip


def _links(fig: go.Figure, bill: DrainBill, drain_dir: Path, colour: dict[str, str]) -> bool:
    """Row 2: each host's uplink, sent (solid) and received (dotted), Mbit/s, in the host's
    legend group (out of the legend: its key is _legend's). False: no data."""
    numeric, text = load_series(drain_dir, "links")
    hosts = np.array(text.get("host", []), dtype=object)
    if "t_ns" not in numeric or not len(hosts):
        return False
    for host in dict.fromkeys(hosts.tolist()):
        mask = hosts == host
        t = numeric["t_ns"][mask]
        order = np.argsort(t, kind="stable")
        t = t[order]
        if len(t) < 2:
            continue
        seconds = (t[1:] - bill.t0_ns) / 1e9
        dt = np.diff(t) / 1e9
        for column, dash in (("tx_bytes", "solid"), ("rx_bytes", "dot")):
            rate = np.diff(numeric[column][mask][order]) * 8 / np.where(dt > 0, dt, np.nan) / 1e6
            fig.add_trace(
                go.Scatter(
                    x=seconds, y=rate, mode="lines", name=f"{host} {column[:2]}",
                    legendgroup=host, showlegend=False,
                    line={"color": colour.get(host, "#888"), "dash": dash, "width": 1.5},
                    hovertemplate=f"{esc(host)} {column[:2]} %{{y:.1f}} Mbit/s<br>"
                    "t %{x:.2f} s<extra></extra>",
                ),
                row=2, col=1,
            )  # fmt: skip
    return True


def _legend(fig: go.Figure, colour: dict[str, str]) -> None:
    """The legend: one key for the planned bars, then one per host drawn, each naming the host
    once and toggling all of its traces (the guests' bars to it, its uplink) together. The keys
    are legend-only traces (no data), so every key is the same square swatch, whether its
    group draws bars, lines or both: pale and outlined for planned, the host's colour else."""
    groups = dict.fromkeys(trace.legendgroup for trace in fig.data)
    hosts = sorted(
        (g for g in groups if g and g != PLANNED),
        key=lambda g: list(colour).index(g) if g in colour else len(colour),
    )
    keys = [(PLANNED, PLANNED_FILL, PLANNED_EDGE)] if PLANNED in groups else []
    keys += [(host, colour.get(host, "#888"), colour.get(host, "#888")) for host in hosts]
    for name, fill, edge in keys:
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode="markers", name=name, legendgroup=name,
                marker={"symbol": "square", "size": 12, "color": fill,
                        "line": {"color": edge, "width": 1.5}},
                hoverinfo="skip",
            ),
            row=1, col=1,
        )  # fmt: skip


def timeline_figure(bill: DrainBill, drain_dir: Path) -> tuple[go.Figure, bool]:
    """The time line's figure: the Gantt over the links' use, sharing the time axis; and
    whether any link sample was drawn."""
    colour = _colours(bill)
    rows = max(len(bill.vms), 1)
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
        row_heights=[0.55, 0.45],
        subplot_titles=["Migrations — planned (outlined) and measured (solid), by destination",
                        "Uplinks — sent (solid) and received (dotted)"],
    )  # fmt: skip
    _gantt(fig, bill, colour)
    drawn = _links(fig, bill, drain_dir, colour)
    _legend(fig, colour)
    fig.update_layout(
        barmode="group", height=260 + rows * BAR_PX + 280, margin={"l": 140, "r": 20, "t": 40},
        template="plotly_white", legend={"orientation": "h"},
    )  # fmt: skip
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_yaxes(title_text="Mbit/s", row=2, col=1)
    fig.update_xaxes(title_text="seconds since the drain's first release", row=2, col=1)
    return fig, drawn


def figure_html(bill: DrainBill, drain_dir: Path) -> str:
    """The time line as an HTML fragment (plotly.js not included), noted when it has no link
    samples."""
    fig, drawn = timeline_figure(bill, drain_dir)
    note = "" if drawn else '<div class="legend-note">no link samples recorded</div>'
    html: str = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id="drain-timeline")
    return note + html


def _header(bill: DrainBill) -> str:
    outcome = bill.outcome.value
    prediction = bill.prediction
    meta = [
        ("drained", esc(bill.drained_host) + " → " + esc(", ".join(bill.receivers))),
        ("testbed", f"{esc(bill.testbed)} ({bill.hypervisors} hypervisor hosts)"),
        ("backend", esc(bill.backend)),
        ("started", esc(bill.started_at)),
    ]
    if prediction is not None:
        meta.append(("model", f"calibrated on {prediction.calibrated_runs} runs"
                     if prediction.calibrated_runs else "plain physics"))  # fmt: skip
    error = (
        f'<div class="error"><b>error</b> <pre>{esc(bill.error)}</pre></div>' if bill.error else ""
    )
    return (
        f'<header><div class="title"><h1>drain {esc(bill.name)}</h1>'
        f'<span class="badge outcome {OUTCOME[bill.outcome]}">{esc(outcome)}</span></div>'
        '<div class="meta">'
        + "".join(f'<span><span class="muted">{k}</span> <b>{v}</b></span>' for k, v in meta)
        + f"</div>{error}</header>"
    )


def _cards(bill: DrainBill) -> str:
    p, worst = bill.prediction, bill.worst
    verified = sum(vm.verified for vm in bill.vms)
    sent = sum(vm.transferred_bytes for vm in bill.vms)
    cards = [
        ("drain time", fmt("x_s", bill.total_drain_time_s),
         f"planned {fmt('x_s', p.predicted_drain_time_s)}, error "
         f"{fmt('x_pct', p.drain_time_error_pct)}" if p else "not planned"),
        ("guests moved", f"{verified} / {len(bill.vms)}", "on their new host, intact"),
        ("per-guest time error", fmt("x_pct", p.median_abs_vm_time_error_pct) if p else "—",
         "median size; bias (median, planned minus measured) "
         + (fmt("x_pct", p.median_vm_time_error_pct) if p else "—")),
        ("worst outage", fmt("x_ms", worst.largest_outage_ms), esc(worst.largest_outage_vm or "")),
        ("worst p99 during", fmt("x_ms", worst.worst_p99_ms), esc(worst.worst_p99_vm or "")),
        ("transferred", fmt("x_bytes", sent), "all migrations"),
    ]  # fmt: skip
    body = "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div>'
        f'<div class="sub">{sub}</div></div>'
        for k, v, sub in cards
    )
    return f'<div class="cards">{body}</div>'


def _yes(value: bool | None) -> str:
    if value is None:
        return "—"
    return '<span class="yes">yes</span>' if value else '<span class="no">no</span>'


def _vm_row(vm: VmBill) -> list[str]:
    p, e = vm.predicted, vm.errors
    to = esc(vm.destination_host or "—")
    if p is not None and p.destination_host != vm.destination_host:
        to += f' <span class="muted">(planned {esc(p.destination_host)})</span>'
    link = (
        f'<a href="vms/{esc(vm.name)}/report.html">{esc(vm.name)}</a>'
        if vm.result
        else esc(vm.name)
    )
    return [
        link, to, fmt("x_s", vm.start_s), fmt("x_s", vm.end_s),
        fmt("x_s", vm.migration_time_s) + f'<span class="extra">planned '
        f"{fmt('x_s', p.time_s if p else None)}</span>",
        fmt("x_pct", e.time_pct if e else None),
        fmt("x_ms", vm.downtime_ms), fmt("x_ms", vm.service_outage_ms),
        fmt("x_ms", vm.latency_p99_during_ms), fmt("x_bytes", vm.transferred_bytes),
        esc(vm.outcome or ("did not boot" if not vm.booted else "—")), _yes(vm.verified),
    ]  # fmt: skip


def _vms(bill: DrainBill) -> str:
    header = ["guest", "to", "start", "end", "time", "time error", "downtime", "outage",
              "p99 during", "sent", "outcome", "verified"]  # fmt: skip
    errors = "".join(
        f"<li><b>{esc(vm.name)}</b>: {esc(vm.error)}</li>" for vm in bill.vms if vm.error
    )
    notes = f"<ul>{errors}</ul>" if errors else ""
    return (
        '<section><h2>Guests <span class="muted small">times since the first release; each '
        "guest's own report has its whole bill</span></h2>"
        + grid_table(header, (_vm_row(vm) for vm in bill.vms), "grid numbers")
        + notes
        + "</section>"
    )


def _hosts(bill: DrainBill) -> str:
    rows = [
        [esc(name), fmt("x_bytes", h.tx_bytes), fmt("x_bytes", h.rx_bytes),
         fmt("x_mbit_s", h.peak_tx_mbit_s), fmt("x_mbit_s", h.peak_rx_mbit_s),
         fmt("x_cpu_s", h.cpu_seconds), fmt("x_pct", h.peak_cpu_pct)]
        for name, h in bill.hosts.items()
    ]  # fmt: skip
    header = ["host", "sent", "received", "peak sent", "peak received", "CPU", "peak CPU"]
    return (
        f'<section><h2>Hosts <span class="muted small">{esc(bill.sampler)}</span></h2>'
        + grid_table(header, rows, "grid numbers")
        + "</section>"
    )


def _plan(bill: DrainBill) -> str:
    if bill.plan is None or bill.inputs is None:
        return ""
    policy = bill.plan.policy
    cap = "no cap" if policy.parallel_total is None else str(policy.parallel_total)
    rows = [
        ("order, placement", f"{esc(policy.order)}, {esc(policy.placement)}"),
        ("parallel per host, in all", f"{policy.parallel_per_host}, {esc(cap)}"),
        ("link", fmt("x_mbit_s", bill.inputs.link_mbit_s)
         + (" measured" if bill.inputs.link_measured else " configured")),
    ] + [
        (name, f"touched {plain(g.touched_mib)} of {plain(g.memory_mib)} MiB, dirties "
         f"{plain(g.dirty_rate_mib_s, 2)} MiB/s" + ("" if g.measured else " (declared)"))
        for name, g in bill.inputs.guests.items()
    ]  # fmt: skip
    return "<section><h2>The plan's inputs</h2>" + kv_table(rows, "kv compact") + "</section>"


def render_drain_html(drain_dir: Path, bill: DrainBill) -> str:
    """The whole page as a string (plotly.js inlined)."""
    body = (
        _header(bill) + _cards(bill)
        + f'<section id="timeline"><h2>Time line</h2>{figure_html(bill, drain_dir)}</section>'
        + _vms(bill) + _hosts(bill) + _plan(bill)
    )  # fmt: skip
    plotly_js = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>vmigrate · drain {esc(bill.name)} · {esc(bill.outcome.value)}</title>"
        f"<style>{CSS}</style><script>{plotly_js}</script></head><body><main>{body}"
        f"<footer>vmigrate drain report of {esc(drain_dir.name)} · figures from drain.json, "
        "uplinks from series/links.csv</footer></main></body></html>\n"
    )


def render_drain_report(drain_dir: Path, bill: DrainBill) -> Path:
    """Write DRAIN_DIR/report.html; its path."""
    path = drain_dir / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_drain_html(drain_dir, bill), encoding="utf-8")
    tmp.replace(path)
    return path
