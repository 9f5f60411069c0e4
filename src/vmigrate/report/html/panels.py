"""The panels of the time line, one function each: what it draws from RUN/series, and
whether it drew anything."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from vmigrate.report.html.figure import TimelineFigure
from vmigrate.report.html.formatting import MIB, num, obj, plain
from vmigrate.report.html.series import (
    Array,
    Series,
    downsample,
    group_rows,
    rolling_percentiles,
    summed_level,
    summed_rate,
    thin_marks,
)
from vmigrate.report.html.style import CLASS_DASH


def latency_panel(tl: TimelineFigure, row: int) -> bool:
    """(a) every request's latency at its intended send time, rolling p50/p99, failures."""
    req = tl.series("requests")
    intended, done = req.col("intended_ns"), req.col("done_ns")
    if intended is None or done is None:
        return False
    t = tl.seconds(intended)
    latency = (done - intended) / 1e6
    failed, timeout, ok = _request_outcomes(req, latency, len(t))
    _draw_latencies(tl, row, t[ok], latency[ok])
    top = float(np.nanmax(latency[ok])) if np.any(ok) else 1.0
    _draw_failures(tl, row, t, latency, failed, timeout, top)
    _draw_sla(tl, row, t)
    tl.fig.update_yaxes(type="log", dtick=1, row=row, col=1)
    return True


def _request_outcomes(req: Series, latency: Array, count: int) -> tuple[Array, Array, Array]:
    """Masks of the requests that failed, timed out, or were answered with a usable latency."""
    status = req.col("status")
    errors = np.array(req.text("error"), dtype=object)
    bad_status = (
        ~((status >= 200) & (status < 400)) if status is not None else np.zeros(count, bool)
    )
    timeout = errors == "timeout"
    failed = ((errors != "") | bad_status) & ~timeout
    ok = ~failed & ~timeout & np.isfinite(latency) & (latency > 0)
    return failed, timeout, ok


def _draw_latencies(tl: TimelineFigure, row: int, t: Array, latency: Array) -> None:
    """The answered requests as dots (downsampled), with their rolling p50 and p99 over them."""
    order = np.argsort(t, kind="stable")
    x, y = downsample(t[order], latency[order], body=True)
    tl.add(
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
    centres, (p50, p99), window = rolling_percentiles(t, latency, (50, 99))
    label = f"{window * 1000:.0f} ms" if window < 10 else f"{window:.0f} s"
    tl.line(row, centres, p50, f"p50 ({label})", "#1f2328", unit="ms", width=1.8, gl=True)
    tl.line(row, centres, p99, f"p99 ({label})", "#d9480f", unit="ms", width=1.8, gl=True)


def _draw_failures(
    tl: TimelineFigure,
    row: int,
    t: Array,
    latency: Array,
    failed: Array,
    timeout: Array,
    top: float,
) -> None:
    """Errors and timeouts as red marks at their latency (else the timeout or the slowest one)."""
    timeout_ms = num(obj(tl.result.scenario.get("load")).get("timeout_ms"))
    for mask, name, symbol in ((failed, "error", "x"), (timeout, "timeout", "triangle-up")):
        if not np.any(mask):
            continue
        y_fail = latency[mask].copy()
        fallback = timeout_ms if name == "timeout" and timeout_ms else top
        y_fail[~(np.isfinite(y_fail) & (y_fail > 0))] = fallback
        order = np.argsort(t[mask], kind="stable")
        x_fail, y_fail = downsample(t[mask][order], y_fail[order])
        kind = go.Scatter if len(x_fail) <= 2000 else go.Scattergl  # SVG while it is cheap
        tl.add(
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
                hovertemplate=f"{name}<br>%{{y:.1f}} ms<br>intended at %{{x:.3f}} s<extra></extra>",
            ),
        )


def _draw_sla(tl: TimelineFigure, row: int, t: Array) -> None:
    """The service's SLA as a dotted level across the panel, when the run has one."""
    sla = tl.result.service.sla_ms
    if sla and len(t):
        lo, hi = tl.x_range or (float(np.nanmin(t)), float(np.nanmax(t)))
        tl.add(
            row,
            go.Scatter(
                x=[lo, hi],
                y=[sla, sla],
                name=f"SLA {plain(sla)} ms",
                mode="lines",
                line={"color": "#6e7781", "dash": "dot", "width": 1},
                hoverinfo="skip",
            ),
        )


def probe_panel(tl: TimelineFigure, row: int) -> bool:
    """(b) probe round trips, the silence before each reply (a step), lost probes, and the
    observed downtime shaded."""
    probe = tl.series("probe")
    send, recv = probe.col("send_ns"), probe.col("recv_ns")
    if send is None or recv is None:
        return False
    order = np.argsort(send, kind="stable")
    send, recv = send[order], recv[order]
    replied = np.isfinite(recv)
    t_send = tl.seconds(send)
    rtt = (recv - send) / 1e6
    _draw_round_trips(tl, row, t_send[replied], rtt[replied])
    _draw_reply_gaps(tl, row, np.sort(tl.seconds(recv[replied])))
    _draw_lost(tl, row, t_send[~replied])
    _shade_observed_downtime(tl, row)
    tl.fig.update_yaxes(type="log", dtick=1, row=row, col=1)
    return True


def _draw_round_trips(tl: TimelineFigure, row: int, t_send: Array, rtt: Array) -> None:
    """Every answered probe's round trip at its send time (downsampled)."""
    x, y = downsample(t_send, rtt, body=True)
    tl.add(
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


def _draw_reply_gaps(tl: TimelineFigure, row: int, replies: Array) -> None:
    """The silence before each reply as a step: the downtime is the tallest one."""
    if len(replies) >= 2:
        gaps_ms = np.diff(replies) * 1000
        x, y = downsample(replies[1:], gaps_ms)
        tl.add(
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


def _draw_lost(tl: TimelineFigure, row: int, lost: Array) -> None:
    """A tick per lost probe at its send time, at the probe interval's height."""
    if len(lost):
        interval = tl.result.service.probe_interval_ms or 1.0
        marks = thin_marks(lost)
        tl.add(
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


def _shade_observed_downtime(tl: TimelineFigure, row: int) -> None:
    """The observed downtime as a red band with its length, where the analysis found it."""
    svc = tl.result.service
    start, width = svc.observed_downtime_start_s, svc.observed_downtime_ms
    if start is not None and width is not None:
        xref, yref = tl.refs(row)
        tl.fig.add_shape(
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
        tl.fig.add_annotation(
            xref=xref,
            yref=f"{yref} domain",
            x=start + width / 1000,
            y=0.97,
            xanchor="left",
            yanchor="top",
            showarrow=False,
            text=f"<b>observed downtime {plain(width, 1)} ms</b>",
            font={"color": "#a40e26", "size": 12},
            bgcolor="rgba(255,255,255,0.8)",
        )


def migration_panel(tl: TimelineFigure, row: int) -> bool:
    """(c) QEMU's throughput (from transferred bytes if it reported none) and remaining MiB."""
    mig = tl.series("migration")
    t_ns = mig.col("t_ns")
    if t_ns is None:
        return False
    t = tl.seconds(t_ns)
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
        tl.line(row, t, thr, "throughput", "#1f6feb", unit="Mbit/s", width=2)
        drew = True
    remaining = mig.col("remaining_bytes")
    if remaining is not None and np.any(np.isfinite(remaining)):
        tl.line(
            row,
            t,
            remaining[order] / MIB,
            "remaining (right axis)",
            "#8250df",
            dash="dash",
            secondary=True,
            unit="MiB",
        )
        tl.fig.update_yaxes(
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
    tl.fig.update_yaxes(rangemode="tozero", row=row, col=1, secondary_y=False)
    return drew


def dirty_panel(tl: TimelineFigure, row: int) -> bool:
    """(d) QEMU's dirty-page rate, and where each pre-copy pass started."""
    mig = tl.series("migration")
    t_ns, rate = mig.col("t_ns"), mig.col("dirty_rate_mib_s")
    drew = False
    if t_ns is not None and rate is not None and np.any(np.isfinite(rate)):
        t = tl.seconds(t_ns)
        order = np.argsort(t, kind="stable")
        tl.line(row, t[order], rate[order], "dirty rate", "#c2255c", unit="MiB/s", width=2)
        drew = True
    start = tl.migration_start()
    passes = tl.result.phases.iterations
    times = [p.t_s + start for p in passes if start is not None]
    if times:
        tl.add(
            row,
            go.Scatter(
                x=times,
                y=[0.0] * len(times),
                name="pass starts",
                mode="markers+text",
                text=[f"#{p.pass_}" for p in passes][: len(times)],
                textposition="top center",
                textfont={"size": 10, "color": "#57606a"},
                marker={"symbol": "triangle-up", "size": 9, "color": "#57606a"},
                cliponaxis=False,
                hovertemplate="pass %{text} starts at %{x:.3f} s<extra></extra>",
            ),
        )
        drew = True
    tl.fig.update_yaxes(rangemode="tozero", row=row, col=1)
    return drew


def cpu_panel(tl: TimelineFigure, row: int) -> bool:
    """(e) CPU per host (all its processes) and per QEMU thread class."""
    drew = False
    per_host = tl.per_host("processes", "cpu_s", ("pid", "name"))
    for host in sorted(per_host, key=tl.host_order):
        x, y = summed_rate(per_host[host], tl.sample_s)
        if len(x) and np.nanmax(y) > 0.0005:
            tl.line(row, x, y * 100, host, tl.colour(host), unit="%", width=2)
            drew = True
    threads = tl.series("threads")
    klass_of = threads.text("thread_class")
    hosts = threads.text("host")
    for host_class, groups in _per_host_class(tl, threads, hosts, klass_of).items():
        host, klass = host_class
        x, y = summed_rate(groups, tl.sample_s)
        if len(x) and np.nanmax(y) > 0.0005:
            tl.line(
                row,
                x,
                y * 100,
                f"{host} QEMU {klass}",
                tl.colour(host),
                dash=CLASS_DASH.get(klass, "dash"),
                unit="%",
                width=1.3,
            )
            drew = True
    tl.fig.update_yaxes(rangemode="tozero", row=row, col=1)
    return drew


def _per_host_class(
    tl: TimelineFigure, threads: Series, hosts: list[str], classes: list[str]
) -> dict[tuple[str, str], list[tuple[Array, Array]]]:
    """The (t_s, CPU seconds) of every QEMU thread, grouped by host and thread class."""
    t_ns, cpu = threads.col("t_ns"), threads.col("cpu_s")
    if t_ns is None or cpu is None:
        return {}
    t = tl.seconds(t_ns)
    keys = ["\x00".join(p) for p in zip(hosts, classes, threads.text("tid"), strict=True)]
    out: dict[tuple[str, str], list[tuple[Array, Array]]] = {}
    for key, index in group_rows(keys).items():
        host, klass, _ = key.split("\x00")
        out.setdefault((host, klass or "other"), []).append((t[index], cpu[index]))
    order = {k: i for i, k in enumerate(CLASS_DASH)}
    return dict(
        sorted(
            out.items(),
            key=lambda kv: (tl.host_order(kv[0][0]), order.get(kv[0][1], 99), kv[0][1]),
        )
    )


def network_panel(tl: TimelineFigure, row: int) -> bool:
    """(f) uplink sent/received per host."""
    drew = False
    tx = tl.per_host("links", "tx_bytes", ())
    rx = tl.per_host("links", "rx_bytes", ())
    for host in sorted(set(tx) | set(rx), key=tl.host_order):
        for groups, word, dash in (
            (tx.get(host), "sent", "solid"),
            (rx.get(host), "received", "dot"),
        ):
            if not groups:
                continue
            x, y = summed_rate(groups, tl.sample_s)
            if len(x):
                tl.line(
                    row,
                    x,
                    y * 8 / 1e6,
                    f"{host} {word}",
                    tl.colour(host),
                    dash=dash,
                    unit="Mbit/s",
                )
                drew = True
    tl.fig.update_yaxes(rangemode="tozero", row=row, col=1)
    return drew


def disk_panel(tl: TimelineFigure, row: int) -> bool:
    """(g) block IO per host, summed over its processes."""
    drew = False
    read = tl.per_host("processes", "read_bytes", ("pid", "name"))
    write = tl.per_host("processes", "write_bytes", ("pid", "name"))
    for host in sorted(set(read) | set(write), key=tl.host_order):
        for groups, word, dash in (
            (read.get(host), "read", "solid"),
            (write.get(host), "written", "dash"),
        ):
            if not groups:
                continue
            x, y = summed_rate(groups, tl.sample_s)
            if len(x) and np.nanmax(y) > 0:
                tl.line(
                    row,
                    x,
                    y / MIB,
                    f"{host} {word}",
                    tl.colour(host),
                    dash=dash,
                    unit="MiB/s",
                )
                drew = True
    tl.fig.update_yaxes(rangemode="tozero", row=row, col=1)
    return drew


def rss_panel(tl: TimelineFigure, row: int) -> bool:
    """(h) resident memory of QEMU per host."""
    series = tl.series("processes")
    t_ns, rss = series.col("t_ns"), series.col("rss_bytes")
    if t_ns is None or rss is None:
        return False
    names = series.text("name")
    hosts = series.text("host")
    keys = [f"{h}\x00{p}" for h, p in zip(hosts, series.text("pid"), strict=True)]
    qemu = np.array(["qemu" in n.lower() for n in names], dtype=bool)
    t = tl.seconds(t_ns)
    per_host: dict[str, list[tuple[Array, Array]]] = {}
    for key, index in group_rows(keys).items():
        index = index[qemu[index]]
        if len(index):
            per_host.setdefault(key.split("\x00", 1)[0], []).append((t[index], rss[index]))
    drew = False
    for host in sorted(per_host, key=tl.host_order):
        x, y = summed_level(per_host[host], tl.sample_s)
        if len(x):
            tl.line(row, x, y / MIB, f"{host} QEMU", tl.colour(host), unit="MiB", width=2)
            drew = True
    tl.fig.update_yaxes(rangemode="tozero", row=row, col=1)
    return drew
