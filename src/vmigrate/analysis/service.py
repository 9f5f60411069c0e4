"""What a client of the service saw: the outage the probe measured, request latency per window,
errors, SLA violations and throughput.

Latency is measured from each request's *intended* send time (open-loop, no coordinated
omission). Percentiles use the nearest-rank definition (the value at rank ceil(p·N)), the one
HdrHistogram reports.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hdrh.histogram import HdrHistogram

from vmigrate.analysis.windows import WINDOW_NAMES, Array, Mask, Windows, finite_or_none
from vmigrate.result.service import LatencySummary, Requests, Service, SlaViolations
from vmigrate.stats import nearest_rank

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
HDR_MAX_US = 3_600_000_000  # one hour


def latency_summary(latency_ms: Array) -> LatencySummary | None:
    """count, p50, p90, p99, p999, max, mean of a set of latencies in ms (None when empty)."""
    if len(latency_ms) == 0:
        return None
    ranked = {
        name: finite_or_none(nearest_rank(latency_ms, pct)) for name, pct in PERCENTILES.items()
    }
    return LatencySummary(
        count=len(latency_ms),
        p50=ranked["p50"],
        p90=ranked["p90"],
        p99=ranked["p99"],
        p999=ranked["p999"],
        max=finite_or_none(float(np.max(latency_ms))),
        mean=finite_or_none(float(np.mean(latency_ms))),
    )


def hdr_encoded(latency_ms: Array) -> str | None:
    """An HdrHistogram of the latencies (µs, 3 significant digits), compressed, base64."""
    if len(latency_ms) == 0:
        return None
    histogram = HdrHistogram(1, HDR_MAX_US, 3)
    for value in np.clip(np.rint(latency_ms * 1000.0), 1, HDR_MAX_US):
        histogram.record_value(int(value))
    encoded: bytes = histogram.encode()  # already base64
    return encoded.decode()


def observed_downtime(
    send_ns: Array, recv_ns: Array, window: tuple[int, int]
) -> tuple[float | None, float | None, int, int]:
    """Longest gap between successful probe replies that overlaps `window`.

    Returns (gap_ms, gap_start_ns, probes sent in the window, probes of it lost). A gap still
    open at the last probe (no reply ever came back) ends at the last probe's send time.
    """
    if len(send_ns) == 0:
        return None, None, 0, 0
    in_window = (send_ns >= window[0]) & (send_ns <= window[1])
    sent = int(np.count_nonzero(in_window))
    lost = int(np.count_nonzero(in_window & np.isnan(recv_ns)))
    replies = np.sort(recv_ns[~np.isnan(recv_ns)])
    last_send = float(np.max(send_ns))
    if len(replies) == 0:
        return (last_send - float(np.min(send_ns))) / 1e6, float(np.min(send_ns)), sent, lost
    starts = replies
    ends = np.append(replies[1:], max(last_send, float(replies[-1])))
    overlapping = (ends > window[0]) & (starts < window[1])
    if not np.any(overlapping):
        return None, None, sent, lost
    gaps = np.where(overlapping, ends - starts, -1.0)
    best = int(np.argmax(gaps))
    return float(gaps[best]) / 1e6, float(starts[best]), sent, lost


def answered(requests: dict[str, Array], errors: list[str]) -> Mask:
    """Which requests completed with HTTP 200 and no client error (a boolean mask)."""
    intended = requests.get("intended_ns", np.array([]))
    done = requests.get("done_ns", np.array([]))
    status = requests.get("status", np.array([]))
    error = np.array(errors if errors else [""] * len(intended), dtype=object)
    ok: Mask = (status == 200) & (error == "") & ~np.isnan(done)
    return ok


class ProbeFigures(NamedTuple):
    """What the UDP probe measured, as the `service` section reports it."""

    downtime_ms: float | None
    downtime_start_s: float | None
    sent: int
    lost: int
    replies_after: int | None


def probe_figures(probe: dict[str, Array], windows: Windows) -> ProbeFigures:
    """The probe's longest silence in the migration window, and whether the guest answered after."""
    send_ns = probe.get("send_ns", np.array([]))
    recv_ns = probe.get("recv_ns", np.array([]))
    gap_ms, gap_start, sent, lost = observed_downtime(send_ns, recv_ns, windows.during)
    replies_after = int(
        np.count_nonzero((recv_ns > windows.after[0]) & (recv_ns <= windows.after[1]))
    )
    return ProbeFigures(
        downtime_ms=finite_or_none(gap_ms),
        downtime_start_s=finite_or_none(
            (gap_start - windows.t0_ns) / 1e9 if gap_start is not None else None, 6
        ),
        sent=sent,
        lost=lost,
        replies_after=replies_after if len(send_ns) else None,
    )


def window_figures(
    ok: Mask, intended: Array, done: Array, latency_ms: Array, windows: Windows
) -> tuple[dict[str, LatencySummary | None], dict[str, str | None], dict[str, float | None]]:
    """Per window: latency summary and histogram (by intended send), completions per second."""
    latency: dict[str, LatencySummary | None] = {}
    histograms: dict[str, str | None] = {}
    throughput: dict[str, float | None] = {}
    for name in WINDOW_NAMES:
        start, end = windows.get(name)
        mine = ok & (intended >= start) & (intended <= end)
        latency[name] = latency_summary(latency_ms[mine])
        histograms[name] = hdr_encoded(latency_ms[mine])
        completed = ok & (done >= start) & (done <= end)
        seconds = windows.duration_s(name)
        throughput[name] = (
            finite_or_none(np.count_nonzero(completed) / seconds) if seconds > 0 else None
        )
    return latency, histograms, throughput


def sla_violations(
    ok: Mask, latency_ms: Array, during: Mask, sla_ms: float, baseline: LatencySummary | None
) -> SlaViolations:
    """Requests sent in the migration slower than the SLA or 2x baseline p99; failures count."""
    baseline_p99 = baseline.p99 if baseline else None
    slow = np.where(ok, latency_ms, np.inf)
    over_sla = int(np.count_nonzero(during & (slow > sla_ms)))
    over_2x = (
        int(np.count_nonzero(during & (slow > 2 * baseline_p99)))
        if baseline_p99 is not None
        else None
    )
    return SlaViolations(
        over_sla=over_sla, over_2x_baseline_p99=over_2x, baseline_p99_ms=baseline_p99
    )


def request_counts(intended: Array, error: Array, ok: Mask, during: Mask) -> Requests:
    """How many requests were sent, answered, failed, timed out, and failed during migration."""
    timeouts = error == "timeout"
    return Requests(
        sent=len(intended),
        ok=int(np.count_nonzero(ok)),
        errors=int(np.count_nonzero(~ok & ~timeouts)),
        timeouts=int(np.count_nonzero(timeouts)),
        failed_during=int(np.count_nonzero(during & ~ok)),
    )


def service_section(
    probe: dict[str, Array],
    requests: dict[str, Array],
    errors: list[str],
    windows: Windows,
    probe_interval_ms: float,
    sla_ms: float,
) -> Service:
    """The `service` section of result.json."""
    seen = probe_figures(probe, windows)
    intended = requests.get("intended_ns", np.array([]))
    done = requests.get("done_ns", np.array([]))
    error = np.array(errors if errors else [""] * len(intended), dtype=object)
    ok = answered(requests, errors)
    latency_ms = (done - intended) / 1e6
    latency, histograms, throughput = window_figures(ok, intended, done, latency_ms, windows)
    start, end = windows.during
    during = (intended >= start) & (intended <= end)
    violations = sla_violations(ok, latency_ms, during, sla_ms, latency["baseline"])
    return Service(
        probe_interval_ms=probe_interval_ms,
        observed_downtime_ms=seen.downtime_ms,
        observed_downtime_start_s=seen.downtime_start_s,
        probe_sent=seen.sent,
        probe_lost=seen.lost,
        probe_replies_after_migration=seen.replies_after,
        latency_ms=latency,
        requests=request_counts(intended, error, ok, during),
        sla_ms=sla_ms,
        sla_violations=violations,
        throughput_rps=throughput,
        histograms=histograms,
    )
