"""The outage section of the report: its parts side by side, and the switch-over as a
waterfall — each step a bar from the moment before it, on one time axis (ms after the stop)."""

from __future__ import annotations

from typing import Any

from vmigrate.report.html.formatting import esc, kv_table, num, obj, plain
from vmigrate.result import Result

#: The waterfall's moments in order: key in outage.waterfall_s, what ends there, and the colour
#: of the bar that ends there (amber: the VM still runs, red: its vCPUs are stopped, green: the
#: network finds it again, blue: the service answers).
STEPS: tuple[tuple[str, str, str], ...] = (
    ("last_pass", "last pre-copy pass begins", "#bf8700"),
    ("stop", "final pass: the vCPUs stop", "#bf8700"),
    ("ram_saved", "the last RAM written (QEMU)", "#cf222e"),
    ("devices_saved", "the device state written (QEMU)", "#cf222e"),
    ("source_done", "the source has sent it all", "#cf222e"),
    ("destination_loaded", "the destination has loaded it (QEMU)", "#cf222e"),
    ("destination_running", "the destination runs the VM", "#cf222e"),
    ("announce", "the guest announces itself (ARP/RARP)", "#1a7f37"),
    ("first_packet", "first probe reply at the client", "#1a7f37"),
    ("first_response", "first HTTP response at the client", "#0969da"),
)
WIDTH, LABEL_W, ROW_H = 760, 270, 22


def _ms(value: Any) -> str:
    return "—" if (v := num(value)) is None else f"{plain(v, 1)} ms"


def _figures(outage: dict[str, Any]) -> str:
    capture = obj(outage.get("capture"))
    wire = num(capture.get("network_outage_ms"))
    differ = num(capture.get("probe_minus_capture_ms"))
    wire_text = (
        f'{_ms(wire)} <span class="muted">(probe {"+" if (differ or 0) >= 0 else ""}'
        f"{plain(differ, 2)} ms)</span>"
        if wire is not None and differ is not None
        else esc(capture.get("error") or "no capture (measure.capture = false)")
    )
    return kv_table([
        ("hypervisor's downtime", _ms(outage.get("hypervisor_downtime_ms"))),
        ("vCPU blackout (stop → running on the destination)", _ms(outage.get("blackout_ms"))),
        ("network reconvergence (running → first reply)", _ms(outage.get("reconvergence_ms"))),
        ("last reply after the stop (queued in the source's network backend)",
         _ms(outage.get("stop_to_last_reply_ms"))),
        ("network outage (probe): blackout + reconvergence - the above",
         _ms(outage.get("network_outage_ms"))),
        ("network outage on the wire (packet capture)", wire_text),
        ("service outage (no HTTP response)", _ms(outage.get("service_outage_ms"))),
        (f"brownout (slower than {plain(num(outage.get('sla_ms')) or 0)} ms, or failed)",
         _ms(outage.get("brownout_ms"))),
    ])  # fmt: skip


def waterfall_svg(waterfall: dict[str, Any]) -> str:
    """The moments as a waterfall: one row per step, its bar from the moment before; the axis
    starts a little before the stop (a long last pass is cut, its length written beside)."""
    moments = [(label, t * 1000.0, colour) for key, label, colour in STEPS
               if (t := num(waterfall.get(key))) is not None]  # fmt: skip
    stop = num(waterfall.get("stop"))
    if stop is None or len(moments) < 2:
        return '<p class="muted">no switch-over seen: no waterfall</p>'
    stop_ms = stop * 1000.0
    end = max(t for _, t, _ in moments)
    span = max(end - stop_ms, 1.0)
    start = stop_ms - 0.08 * span
    scale = (WIDTH - LABEL_W - 70) / (end - start)

    def x(t: float) -> float:
        return LABEL_W + (max(t, start) - start) * scale

    rows = []
    for i, (label, t, colour) in enumerate(moments[1:], start=1):
        before = moments[i - 1][1]
        y = 20 + (i - 1) * ROW_H
        left, right = x(before), x(t)
        rows.append(
            f'<text x="{LABEL_W - 8}" y="{y + 14}" text-anchor="end">{esc(label)}</text>'
            f'<rect class="wf-bar" x="{left:.1f}" y="{y + 3}" width="{max(right - left, 1.5):.1f}"'
            f' height="{ROW_H - 6}" fill="{colour}"/>'
            f'<text x="{max(right, left) + 5:.1f}" y="{y + 14}">{t - before:+.1f} ms</text>'
        )
    height = 20 + (len(moments) - 1) * ROW_H + 26
    ticks = []
    step = _tick_step(end - start)
    tick = step * round(start / step - stop_ms / step)
    while stop_ms + tick <= end:
        if stop_ms + tick >= start:
            tx = x(stop_ms + tick)
            ticks.append(
                f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="14" y2="{height - 22}" class="wf-grid"/>'
                f'<text x="{tx:.1f}" y="{height - 8}" text-anchor="middle">{plain(tick, 0)}</text>'
            )
        tick += step
    return (
        f'<svg id="waterfall" class="waterfall" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="the switch-over, step by step">'
        f'<text x="{LABEL_W}" y="10" class="muted">ms after the vCPUs stopped</text>'
        + "".join(ticks)
        + "".join(rows)
        + "</svg>"
    )


def _tick_step(span_ms: float) -> float:
    """A round tick step giving about five ticks over `span_ms`."""
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if span_ms / step <= 6:
            return float(step)
    return 10000.0


def outage_html(result: Result) -> str:
    """The outage section (nothing for a result without one)."""
    # read as a dict, like analysis/outage.py writes it (both change together)
    outage = result.outage.model_dump() if result.outage is not None else {}
    if not outage:
        return ""
    return (
        '<section id="outage"><h2>The outage, decomposed <span class="muted small">each part '
        "from its own instrument: the hypervisors' events, the probe, the packet capture, the "
        "HTTP load</span></h2>"
        f"{_figures(outage)}{waterfall_svg(obj(outage.get('waterfall_s')))}</section>"
    )
