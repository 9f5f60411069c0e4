"""A realistic synthetic run directory (result.json + every series) for report and analysis tests.

The run: a 1 GiB, 2-vCPU TCG guest running the memory workload (32 MiB/s over a 128 MiB working
set) under 100 req/s of HTTP load and a 1 ms UDP probe, migrated pre-copy over a 1000 Mbit/s
link. Seconds since the run started: boot 0, guest ready 3.2, baseline 6-11, migration 11-17.75
(4 passes, stop-and-copy at 17.59, resumed on the destination at 17.712), after 17.75-22.75.
The guest is unreachable from 17.59 to 17.89 (a ~300 ms probe gap, one timeout and two failed
requests, a latency spike), the source's uplink and CPU step up while it sends, the storage host
flushes and re-reads at the switchover. Everything is generated from a fixed seed (deterministic)
and the result sections are computed from the generated series, so figures and series agree.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

from vmigrate.analysis.outage import outage_section
from vmigrate.analysis.windows import Windows
from vmigrate.config import Scenario, scenario_to_dict

Array = npt.NDArray[np.float64]
S = 1_000_000_000
MIB = 1024 * 1024
T0_NS = 7_200_123_456_789
PAGE = 4096

# seconds since the run started
GUEST_READY = 3.2
BASELINE_START = 6.0
MIG_START = 11.0
SETUP_END = 11.02
ZERO_END = 11.52  # pass 1 first skims the zero pages
SYNC2, SYNC3 = 16.12, 17.26
STOP = 17.59
COMPLETED = 17.71
RESUMED = 17.712
REACHABLE = 17.89  # first probe answered by the destination (network re-announced)
MIG_END = 17.75
AFTER_END = 22.75
SAMPLES_END = 23.0

RAM_MIB = 1024
ZERO_MIB = 512
# cumulative MiB on the wire at each moment of the migration
TRANSFER_KNOTS = (
    (MIG_START, SETUP_END, ZERO_END, SYNC2, SYNC3, STOP, COMPLETED),
    (0.0, 0.0, 1.1, 513.1, 641.1, 677.6, 688.6),
)
PASS_STARTS = (SETUP_END, SYNC2, SYNC3, STOP)

FINE_DT = 0.001
FINE = np.arange(0.0, SAMPLES_END + 0.5, FINE_DT)


def _segments(t: Array, base: float, *segments: tuple[float, float, float]) -> Array:
    """A piecewise-constant rate: `base`, overridden by (start, end, value) segments in order."""
    out = np.full(len(t), base)
    for start, end, value in segments:
        out[(t >= start) & (t < end)] = value
    return out


def _cumulative(rate: Callable[[Array], Array], at: Array, offset: float = 0.0) -> Array:
    """A counter that integrates `rate` (per second) from t=0, read at times `at`."""
    integral = np.cumsum(rate(FINE)) * FINE_DT
    return np.asarray(offset + np.interp(at, FINE, integral), dtype=np.float64)


def _transferred_mib(t: Array) -> Array:
    return np.asarray(np.interp(t, *TRANSFER_KNOTS), dtype=np.float64)


def _migration_wire_mib_s(t: Array) -> Array:
    """MiB/s the migration stream puts on the wire (derivative of the transfer knots)."""
    knots_t, knots_v = TRANSFER_KNOTS
    out = np.zeros(len(t))
    for (a, b), (va, vb) in zip(pairwise(knots_t), pairwise(knots_v), strict=True):
        if b > a:
            out[(t >= a) & (t < b)] = (vb - va) / (b - a)
    return out


def _remaining_mib(t: float) -> float:
    """QEMU's `remaining`: what is left of the current pass (jumps up at each dirty sync)."""
    if t < SETUP_END:
        return float(RAM_MIB)
    if t < ZERO_END:
        return RAM_MIB - (t - SETUP_END) / (ZERO_END - SETUP_END) * ZERO_MIB
    for start, end, size in ((ZERO_END, SYNC2, 512.0), (SYNC2, SYNC3, 128.0), (SYNC3, STOP, 36.5)):
        if t < end:
            return size * (end - t) / (end - start)
    if t < COMPLETED:
        return 10.4 * (COMPLETED - t) / (COMPLETED - STOP)
    return 0.0


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _ns(t_s: float) -> int:
    return T0_NS + round(t_s * S)


def _cell(value: float) -> str:
    return "" if not np.isfinite(value) else repr(round(float(value), 6))


# ---------------------------------------------------------------------------------------------
# the series


def _migration_rows(rng: np.random.Generator) -> list[list[object]]:
    polls = MIG_START + 0.1 * np.arange(69) + rng.uniform(0, 0.003, 69)
    polls[0] = MIG_START + 0.0005
    rows: list[list[object]] = []
    for t in polls:
        status = (
            "setup"
            if t < SETUP_END
            else "active"
            if t < STOP
            else "device"
            if t < COMPLETED
            else "completed"
        )
        sent = float(_transferred_mib(np.array([t]))[0])
        before = float(_transferred_mib(np.array([t - 0.1]))[0])
        mbit = max(0.0, (sent - before) * MIB * 8 / 0.1 / 1e6 * rng.normal(1.0, 0.015))
        iterations = sum(t >= p for p in PASS_STARTS)
        dirty = (
            ""
            if status == "setup"
            else _cell(
                0.0
                if t < SYNC2
                else rng.normal(25.1, 0.4)
                if t < SYNC3
                else rng.normal(32.0, 0.4)
                if t < STOP
                else 31.5
            )
        )
        zero_pages = round(min(1.0, max(0.0, (t - SETUP_END) / (ZERO_END - SETUP_END))) * 131072)
        normal_pages = round(max(0.0, sent - 1.1) * MIB / PAGE)
        remaining = _remaining_mib(t)
        rows.append(
            [
                _ns(t),
                status,
                round(sent * MIB),
                round(remaining * MIB),
                RAM_MIB * MIB,
                zero_pages,
                normal_pages,
                dirty,
                _cell(mbit),
                iterations,
                _cell(remaining / 112.0 * 1000 if t >= SETUP_END else float("nan")),
                0,
            ]
        )
    return rows


EVENTS: list[tuple[float, str, str, dict[str, Any]]] = [
    (MIG_START, "source", "migration", {"status": "setup"}),
    (MIG_START + 0.001, "destination", "migration", {"status": "active"}),
    (SETUP_END, "source", "migration", {"status": "active"}),
    (SETUP_END, "source", "migration_pass", {"pass": 1}),
    (SYNC2, "source", "migration_pass", {"pass": 2}),
    (SYNC3, "source", "migration_pass", {"pass": 3}),
    (STOP, "source", "migration_pass", {"pass": 4}),
    (STOP, "source", "stopped", {}),
    (STOP + 0.001, "source", "migration", {"status": "device"}),
    (STOP + 0.09, "source", "checkpoint", {"checkpoint": "src-iterable-saved"}),
    (STOP + 0.11, "source", "checkpoint", {"checkpoint": "src-non-iterable-saved"}),
    (COMPLETED, "source", "migration", {"status": "completed"}),
    (COMPLETED + 0.001, "destination", "migration", {"status": "completed"}),
    (
        COMPLETED + 0.0015,
        "destination",
        "checkpoint",
        {"checkpoint": "dst-precopy-loadvm-completed"},
    ),
    (RESUMED, "destination", "resumed", {}),
]
# what QEMU calls each kind of event (the backend's own name, kept in result.json)
QMP_NAMES = {"migration": "MIGRATION", "migration_pass": "MIGRATION_PASS", "stopped": "STOP",
             "resumed": "RESUME", "checkpoint": "vmstate_downtime_checkpoint"}  # fmt: skip


def _requests(rng: np.random.Generator) -> tuple[Array, Array, Array, Array, list[str]]:
    """intended, sent, done (ns), status, error of the open-loop HTTP load (100 req/s)."""
    count = round((AFTER_END - BASELINE_START) * 100)
    intended_s = BASELINE_START + 0.01 * np.arange(count, dtype=np.float64)
    base_ms = rng.lognormal(np.log(1.2), 0.3, len(intended_s))
    factor = _segments(intended_s, 1.0, (MIG_START, STOP, 1.35), (MIG_END, AFTER_END, 1.05))
    latency_ms = base_ms * factor
    stalled = (intended_s >= STOP) & (intended_s < REACHABLE)
    # queued behind the outage, drained one after the other once the guest answers again
    latency_ms[stalled] = (REACHABLE - intended_s[stalled]) * 1000 + base_ms[stalled]
    latency_ms[stalled] += 0.3 * np.arange(np.count_nonzero(stalled))[::-1] / 10
    status = np.full(len(intended_s), 200.0)
    error = [""] * len(intended_s)
    for at, kind, after_ms in (
        (17.60, "io", 300.0),
        (17.65, "timeout", 2000.0),
        (17.70, "connect", 190.0),
    ):
        index = int(np.argmin(np.abs(intended_s - at)))
        status[index] = 0.0
        error[index] = kind
        latency_ms[index] = after_ms
    intended = T0_NS + np.round(intended_s * S)
    sent = intended + np.round(rng.uniform(20_000, 60_000, len(intended)))
    done = intended + np.round(latency_ms * 1e6)
    return intended, sent, done, status, error


def _probe(rng: np.random.Generator) -> tuple[Array, Array]:
    """send, recv (ns; NaN = lost) of the 1 ms UDP echo probe."""
    count = round((AFTER_END - BASELINE_START) * 1000)
    send_s = BASELINE_START + 0.001 * np.arange(count, dtype=np.float64)
    rtt_ms = rng.lognormal(np.log(0.15), 0.25, len(send_s))
    rtt_ms *= _segments(send_s, 1.0, (MIG_START, STOP, 1.4))
    send = T0_NS + np.round(send_s * S)
    recv = send + np.round(rtt_ms * 1e6)
    lost = (send_s >= STOP) & (send_s < REACHABLE)
    lost[int(np.argmin(np.abs(send_s - 8.123)))] = True  # one stray loss in the baseline
    recv[lost] = np.nan
    return send, recv


# per host: process -> (pid, first seen, start cpu_s, threads: tid -> (name, class, rate fn))
ThreadSpec = tuple[int, str, str, Callable[[Array], Array], float]


def _threads() -> dict[tuple[str, int], list[ThreadSpec]]:
    """The QEMU threads of source and destination with their CPU rates (CPU-s per s)."""

    def migrating(t: Array, value: float) -> Array:
        return _segments(t, 0.0, (MIG_START, MIG_END, value))

    return {
        ("source", 4101): [
            (
                4101,
                "qemu-system-x86",
                "main",
                lambda t: _segments(t, 0.04, (MIG_START, MIG_END, 0.09), (MIG_END, 99, 0.01)),
                1.4,
            ),
            (4103, "call_rcu", "other", lambda t: _segments(t, 0.005), 0.02),
            (
                4105,
                "CPU 0/TCG",
                "vcpu",
                lambda t: _segments(
                    t, 0.38, (0, BASELINE_START, 0.7), (MIG_START, STOP, 0.47), (STOP, 99, 0.0)
                ),
                2.1,
            ),
            (
                4106,
                "CPU 1/TCG",
                "vcpu",
                lambda t: _segments(
                    t, 0.27, (0, BASELINE_START, 0.5), (MIG_START, STOP, 0.34), (STOP, 99, 0.0)
                ),
                1.6,
            ),
            (4107, "worker", "other", lambda t: _segments(t, 0.012, (STOP, 99, 0.0)), 0.05),
            (
                4160,
                "live_migration",
                "migration",
                lambda t: migrating(t, 0.83) + _segments(t, 0.0, (SETUP_END, ZERO_END, 0.15)),
                0.0,
            ),
        ],
        ("destination", 4202): [
            (
                4202,
                "qemu-system-x86",
                "main",
                lambda t: _segments(t, 0.02, (MIG_START, COMPLETED, 0.58), (COMPLETED, 99, 0.045)),
                0.3,
            ),
            (4203, "call_rcu", "other", lambda t: _segments(t, 0.004), 0.0),
            (
                4205,
                "CPU 0/TCG",
                "vcpu",
                lambda t: _segments(t, 0.0, (RESUMED, 99, 0.4), (RESUMED, REACHABLE + 0.3, 0.8)),
                0.0,
            ),
            (4206, "CPU 1/TCG", "vcpu", lambda t: _segments(t, 0.0, (RESUMED, 99, 0.28)), 0.0),
            (4207, "worker", "other", lambda t: _segments(t, 0.0, (RESUMED, 99, 0.012)), 0.0),
        ],
    }


LIVE: dict[int, tuple[float, float]] = {  # pid or tid -> (first, last) second it is sampled
    4202: (10.4, 99.0),
    4203: (10.4, 99.0),
    4205: (10.4, 99.0),
    4206: (10.4, 99.0),
    4207: (RESUMED, 99.0),
    4160: (MIG_START, MIG_END),
}


def _alive(ident: int, t: Array) -> npt.NDArray[np.bool_]:
    first, last = LIVE.get(ident, (0.0, 99.0))
    return (t >= first) & (t <= last)


def _resource_series(rng: np.random.Generator) -> dict[str, list[list[object]]]:
    """processes, threads and links rows, sampled every 200 ms (with a few ms of jitter)."""
    n = round((SAMPLES_END - GUEST_READY) / 0.2) + 1
    ticks = GUEST_READY + 0.2 * np.arange(n)
    processes: list[list[object]] = []
    threads: list[list[object]] = []
    links: list[list[object]] = []

    def jittered() -> Array:
        return np.asarray(ticks + rng.uniform(0, 0.004, n), dtype=np.float64)

    for (host, pid), specs in _threads().items():
        t = jittered()
        total = np.zeros(n)
        for tid, name, klass, rate, offset in specs:
            cpu = _cumulative(rate, t, offset)
            total += cpu
            for i in np.nonzero(_alive(tid, t))[0].tolist():
                threads.append([_ns(t[i]), host, pid, tid, name, klass, _cell(cpu[i])])
        if host == "source":
            rss = 560 + 110 * np.clip((t - GUEST_READY) / 2.0, 0, 1)
            rss += 24 * np.clip((t - MIG_START) / 0.5, 0, 1)
        else:
            received = np.clip(_transferred_mib(t) - 1.1, 0, 512)
            rss = 45 + received + 95 * np.clip((t - RESUMED) / 1.0, 0, 1)
        rss += rng.normal(0, 0.3, n)
        read = np.full(n, 12.0 * MIB if host == "source" else 0.0)
        write = _cumulative(lambda f: np.full(len(f), 4096.0), t)
        for i in np.nonzero(_alive(pid, t))[0].tolist():
            processes.append(
                [
                    _ns(t[i]),
                    host,
                    pid,
                    "qemu-system-x86_64",
                    _cell(total[i]),
                    round(rss[i] * MIB),
                    round(read[i]),
                    round(write[i]),
                ]
            )

    def ganesha_write(t: Array) -> Array:
        return _segments(t, 1.5 * MIB, (STOP, 18.2, 14 * MIB))

    def ganesha_read(t: Array) -> Array:
        return _segments(t, 0.2 * MIB, (MIG_END, 18.35, 22 * MIB))

    t = jittered()
    ganesha = [
        _cumulative(lambda f: _segments(f, 0.04, (STOP, 18.35, 0.25)), t, 0.8),
        420 * MIB + rng.normal(0, 0.2 * MIB, n),
        _cumulative(ganesha_read, t, 150 * MIB),
        _cumulative(ganesha_write, t, 900 * MIB),
    ]
    rpcbind = [
        _cumulative(lambda f: np.full(len(f), 0.0005), t, 0.01),
        np.full(n, 3.1 * MIB),
        np.zeros(n),
        np.zeros(n),
    ]
    for k in range(n):
        for pid, name, cols in ((3301, "ganesha.nfsd", ganesha), (3290, "rpcbind", rpcbind)):
            processes.append(
                [
                    _ns(t[k]),
                    "storage",
                    pid,
                    name,
                    _cell(cols[0][k]),
                    round(cols[1][k]),
                    round(cols[2][k]),
                    round(cols[3][k]),
                ]
            )

    # uplink counters (bytes/s): guest traffic, NFS, the migration stream
    def http_in(f: Array) -> Array:  # requests + probes, client -> guest
        return np.full(len(f), 100 * 180.0 + 1000 * 106.0)

    def http_out(f: Array) -> Array:  # responses + probe replies, guest -> client
        return _segments(f, 100 * 1400.0 + 1000 * 106.0, (STOP, REACHABLE, 0.0))

    def on_source(f: Array) -> Array:
        return np.asarray(f < REACHABLE, dtype=np.float64)

    def wire(f: Array) -> Array:
        return _migration_wire_mib_s(f) * MIB * 1.03

    def nfs_out(f: Array) -> Array:  # the guest's disk writes, to the storage host
        return ganesha_write(f) * 1.02

    def nfs_in(f: Array) -> Array:  # the guest's disk reads, from the storage host
        return ganesha_read(f) * 1.02

    rates: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
        "source": (
            lambda f: (http_in(f) + nfs_in(f)) * on_source(f) + wire(f) * 0.015 + 300,
            lambda f: (http_out(f) + nfs_out(f)) * on_source(f) + wire(f) + 300,
        ),
        "destination": (
            lambda f: (http_in(f) + nfs_in(f)) * (1 - on_source(f)) + wire(f) + 300,
            lambda f: (http_out(f) + nfs_out(f)) * (1 - on_source(f)) + wire(f) * 0.015 + 300,
        ),
        "storage": (lambda f: nfs_out(f) + 300, lambda f: nfs_in(f) + 300),
        "client": (lambda f: http_out(f) + 300, lambda f: http_in(f) + 300),
    }
    for index, (host, (rx_rate, tx_rate)) in enumerate(rates.items()):
        t = jittered()
        rx = _cumulative(rx_rate, t, 1e6 * (index + 1))
        tx = _cumulative(tx_rate, t, 2e6 * (index + 1))
        for i in range(n):
            links.append(
                [
                    _ns(t[i]),
                    host,
                    round(rx[i]),
                    round(tx[i]),
                    round(rx[i] / 1200),
                    round(tx[i] / 1200),
                ]
            )
    for rows in (processes, threads, links):
        rows.sort(key=lambda row: (row[0], str(row[1]), row[2]))
    return {"processes": processes, "threads": threads, "links": links}


# ---------------------------------------------------------------------------------------------
# result.json sections, computed from the series like the analysis does


def _nearest_rank(values: Array, pct: float) -> float:
    ordered = np.sort(values)
    return float(ordered[max(int(np.ceil(pct / 100 * len(ordered))), 1) - 1])


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


WINDOWS = {
    "baseline": (BASELINE_START, MIG_START),
    "during": (MIG_START, MIG_END),
    "after": (MIG_END, AFTER_END),
}


def _hdr(latency_ms: Array) -> str | None:
    if len(latency_ms) == 0:
        return None
    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for value in np.clip(np.rint(latency_ms * 1000), 1, 3_600_000_000):
        histogram.record_value(int(value))
    encoded: bytes = histogram.encode()
    return encoded.decode()


def _outage(
    requests: tuple[Array, Array, Array, Array, list[str]],
    probe: tuple[Array, Array],
    sla_ms: float,
) -> dict[str, Any]:
    """The outage section, by the analysis itself (tests/unit/test_outage.py checks it against
    known answers; here it only feeds the report)."""
    intended, _, done, status, errors = requests
    ok = (status == 200) & (np.array(errors, dtype=object) == "")
    events = [{"t_s": t, "host": h, "event": n, "data": d} for t, h, n, d in EVENTS]
    windows = Windows.from_marks(
        T0_NS,
        {"baseline_start": BASELINE_START, "migration_start": MIG_START,
         "migration_end": MIG_END, "after_end": AFTER_END},
    )  # fmt: skip
    return outage_section(
        events,
        {"send_ns": probe[0], "recv_ns": probe[1]},
        {"intended_ns": intended, "done_ns": done},
        ok,
        windows,
        sla_ms,
        118.0,
    )


def _service(
    requests: tuple[Array, Array, Array, Array, list[str]],
    probe: tuple[Array, Array],
    sla_ms: float,
) -> dict[str, Any]:
    intended, _, done, status, errors = requests
    error = np.array(errors, dtype=object)
    ok = (status == 200) & (error == "")
    timeouts = error == "timeout"
    latency = (done - intended) / 1e6
    at = (intended - T0_NS) / S
    summaries: dict[str, Any] = {}
    histograms: dict[str, str | None] = {}
    throughput: dict[str, float | None] = {}
    for name, (start, end) in WINDOWS.items():
        mine = latency[ok & (at >= start) & (at <= end)]
        summaries[name] = {
            "count": len(mine),
            **{
                k: _r(_nearest_rank(mine, p))
                for k, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))
            },
            "max": _r(float(mine.max())),
            "mean": _r(float(mine.mean())),
        }
        histograms[name] = _hdr(mine)
        done_s = (done - T0_NS) / S
        throughput[name] = _r(
            np.count_nonzero(ok & (done_s >= start) & (done_s <= end)) / (end - start)
        )
    during = (at >= MIG_START) & (at <= MIG_END)
    baseline_p99 = summaries["baseline"]["p99"]
    slow = np.where(ok, latency, np.inf)

    send, recv = probe
    send_s, recv_s = (send - T0_NS) / S, (recv - T0_NS) / S
    in_window = (send_s >= MIG_START) & (send_s <= MIG_END)
    replies = np.sort(recv_s[np.isfinite(recv_s)])
    gaps = np.diff(replies)
    overlapping = (replies[1:] > MIG_START) & (replies[:-1] < MIG_END)
    best = int(np.argmax(np.where(overlapping, gaps, -1)))
    return {
        "probe_interval_ms": 1.0,
        "observed_downtime_ms": _r(gaps[best] * 1000),
        "observed_downtime_start_s": _r(replies[best], 6),
        "probe_sent": int(np.count_nonzero(in_window)),
        "probe_lost": int(np.count_nonzero(in_window & ~np.isfinite(recv_s))),
        "probe_replies_after_migration": int(
            np.count_nonzero((recv_s > MIG_END) & (recv_s <= AFTER_END))
        ),
        "latency_ms": summaries,
        "requests": {
            "sent": len(intended),
            "ok": int(np.count_nonzero(ok)),
            "errors": int(np.count_nonzero(~ok & ~timeouts)),
            "timeouts": int(np.count_nonzero(timeouts)),
            "failed_during": int(np.count_nonzero(during & ~ok)),
        },
        "sla_ms": sla_ms,
        "sla_violations": {
            "over_sla": int(np.count_nonzero(during & (slow > sla_ms))),
            "over_2x_baseline_p99": int(np.count_nonzero(during & (slow > 2 * baseline_p99))),
            "baseline_p99_ms": baseline_p99,
        },
        "throughput_rps": throughput,
        "histograms": histograms,
    }


def _delta(t: Array, v: Array, start: float, end: float) -> float:
    """Growth of a cumulative counter over [start, end], edges rounded outward to samples."""
    before = np.searchsorted(t, start, side="right") - 1
    after = min(int(np.searchsorted(t, end, side="left")), len(t) - 1)
    return float(v[after] - (v[before] if before >= 0 else 0.0))


def _figures(groups: list[tuple[Array, Array]], digits: int = 3) -> dict[str, Any]:
    during = sum(_delta(t, v, *WINDOWS["during"]) for t, v in groups)
    base = sum(_delta(t, v, *WINDOWS["baseline"]) for t, v in groups)
    rate = base / (MIG_START - BASELINE_START)
    extra = during - rate * (MIG_END - MIG_START)
    return {"during": round(during, digits), "extra": round(extra, digits)}


def _columns(
    rows: list[list[object]], key: tuple[int, ...], value: int
) -> list[tuple[Array, Array]]:
    """(t_s, value) per group of rows with the same key columns."""
    groups: dict[tuple[object, ...], tuple[list[float], list[float]]] = {}
    for row in rows:
        t_list, v_list = groups.setdefault(tuple(row[k] for k in key), ([], []))
        t_list.append((int(str(row[0])) - T0_NS) / S)
        v_list.append(float(str(row[value])))
    return [(np.array(t), np.array(v)) for t, v in groups.values()]


def _held(grid: Array, t: Array, v: Array, cumulative: bool) -> Array:
    """A process's column on `grid`, each point holding the last sample at or before it (0 before
    the first sample; gauges also 0 after the last one)."""
    index = np.searchsorted(t, grid, side="right") - 1
    values = np.where(index >= 0, v[np.clip(index, 0, None)], 0.0)
    return values if cumulative else np.where(grid > t[-1], 0.0, values)


def _resources(series: dict[str, list[list[object]]]) -> dict[str, Any]:
    hosts: dict[str, Any] = {}
    for host in ("source", "destination", "storage"):
        procs = [row for row in series["processes"] if row[1] == host]
        threads = [row for row in series["threads"] if row[1] == host]
        links = [row for row in series["links"] if row[1] == host]
        per_pid = _columns(procs, (2,), 4)
        cpu = _figures(per_pid)
        base = sum(_delta(t, v, *WINDOWS["baseline"]) for t, v in per_pid)
        cpu["baseline_rate"] = round(base / (MIG_START - BASELINE_START), 4)
        grid = np.arange(BASELINE_START, AFTER_END + 0.2, 0.2)
        total = sum((_held(grid, t, v, True) for t, v in per_pid), np.zeros(len(grid)))
        rate = np.diff(total) / 0.2 * 100
        inside = (grid[1:] > MIG_START) & (grid[:-1] < MIG_END)
        rss = sum(
            (_held(grid, t, v, False) for t, v in _columns(procs, (2,), 5)), np.zeros(len(grid))
        )
        classes = {}
        for klass in ("vcpu", "migration", "main", "other"):
            mine = [row for row in threads if row[5] == klass]
            if threads:
                classes[klass] = (
                    _figures(_columns(mine, (3,), 6)) if mine else {"during": None, "extra": None}
                )
        vcpu = classes.get("vcpu") or {"during": 0.0, "extra": 0.0}
        vcpu = vcpu if vcpu["during"] is not None else {"during": 0.0, "extra": 0.0}
        hosts[host] = {
            "cpu_seconds": cpu,
            "migration_cpu_seconds": {k: round(cpu[k] - vcpu[k], 3) for k in ("during", "extra")},
            "vcpu_cpu_seconds": dict(vcpu),
            "cpu_pct_peak": _r(float(rate[inside].max()), 1),
            "qemu_cpu_seconds": classes,
            "net_tx_bytes": _figures(_columns(links, (1,), 3), 0),
            "net_rx_bytes": _figures(_columns(links, (1,), 2), 0),
            "disk_read_bytes": _figures(_columns(procs, (2,), 6), 0),
            "disk_write_bytes": _figures(_columns(procs, (2,), 7), 0),
            "rss_bytes": {
                "before": round(float(rss[np.searchsorted(grid, MIG_START, "left") - 1])),
                "peak": round(float(rss[(grid >= MIG_START) & (grid <= MIG_END + 0.2)].max())),
                "after": round(float(rss[np.searchsorted(grid, AFTER_END, "right") - 1])),
            },
            "processes": sorted({str(row[3]) for row in procs}),
        }
    return {"sample_interval_ms": 200.0, "hosts": hosts}


def _data(migration_rows: list[list[object]]) -> dict[str, Any]:
    last = migration_rows[-1]
    transferred = int(str(last[2]))
    stop_row = next(row for row in migration_rows if row[1] in ("device", "completed"))
    dirty = np.array([float(str(row[7])) for row in migration_rows if row[7] != ""])
    normal_pages = int(str(last[6]))
    precopy = int(str(stop_row[2]))
    return {
        "transferred_bytes": transferred,
        "zero_pages": int(str(last[5])),
        "normal_pages": normal_pages,
        "normal_bytes": normal_pages * PAGE,
        "precopy_bytes": precopy,
        "downtime_bytes": transferred - precopy,
        "postcopy_bytes": 0,
        "dirty_rate_mib_s": {"mean": _r(float(dirty.mean())), "peak": _r(float(dirty.max()))},
        "iterations": int(str(last[9])),
        "amplification_ratio": _r(transferred / (RAM_MIB * MIB), 4),
    }


def _checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The consistency checks, as vmigrate.analysis.checks words them."""
    mig, service = result["migration"], result["service"]
    tx = result["resources"]["hosts"]["source"]["net_tx_bytes"]["during"]
    transferred = mig["transferred_bytes"]
    rate = transferred * 8 / mig["total_time_s"] / 1e6
    link = result["scenario"]["network"]["bandwidth_mbit"]
    observed, reported = service["observed_downtime_ms"], mig["downtime_reported_ms"]
    after = service["probe_replies_after_migration"]

    def check(name: str, ok: bool | None, detail: str, **figures: Any) -> dict[str, Any]:
        return {"name": name, "ok": ok, "detail": detail, "figures": figures}

    return [
        check(
            "source_uplink_carried_the_migration",
            tx >= transferred,
            "bytes the source host's uplink sent during the migration ≥ bytes QEMU says it sent",
            source_uplink_tx_bytes=tx,
            transferred_bytes=transferred,
        ),
        check(
            "observed_downtime_covers_reported",
            observed >= reported - service["probe_interval_ms"],
            "a client sees at least the pause the hypervisor reports (minus one probe interval)",
            observed_downtime_ms=observed,
            downtime_reported_ms=reported,
            probe_interval_ms=service["probe_interval_ms"],
        ),
        check(
            "throughput_within_link_rate",
            rate <= link * 1.02,
            "transferred bytes / total time ≤ the link rate (+2% for the token bucket's burst)",
            average_mbit_s=round(rate, 3),
            link_mbit_s=link,
        ),
        check(
            "service_reachable_after_migration",
            after > 0,
            "the guest answered the probe after the migration window",
            probe_replies_after=after,
        ),
    ]


def make_synthetic_run(path: Path, *, failed_check: bool = False) -> Path:
    """Write a complete run directory at `path` (created) and return it.

    failed_check: declare a 500 Mbit/s link in the scenario, so the measured ~860 Mbit/s makes
    the `throughput_within_link_rate` check false (every other check stays true).
    """
    rng = np.random.default_rng(20260101)
    path.mkdir(parents=True, exist_ok=True)
    series_dir = path / "series"

    migration_rows = _migration_rows(rng)
    _write_csv(
        series_dir / "migration.csv",
        [
            "t_ns",
            "status",
            "transferred_bytes",
            "remaining_bytes",
            "total_bytes",
            "zero_pages",
            "normal_pages",
            "dirty_rate_mib_s",
            "throughput_mbit_s",
            "iterations",
            "expected_downtime_ms",
            "cpu_throttle_pct",
        ],
        migration_rows,
    )
    _write_csv(
        series_dir / "events.csv",
        ["t_ns", "host", "event", "detail"],
        [[_ns(t), host, name, json.dumps(data)] for t, host, name, data in EVENTS],
    )
    requests = _requests(rng)
    intended, sent, done, status, errors = requests
    _write_csv(
        series_dir / "requests.csv",
        ["intended_ns", "sent_ns", "done_ns", "status", "error"],
        [
            [int(a), int(b), int(c), int(d), e]
            for a, b, c, d, e in zip(intended, sent, done, status, errors, strict=True)
        ],
    )
    probe = _probe(rng)
    _write_csv(
        series_dir / "probe.csv",
        ["seq", "send_ns", "recv_ns"],
        [
            [i, int(s), "" if np.isnan(r) else int(r)]
            for i, (s, r) in enumerate(zip(*probe, strict=True))
        ],
    )
    resources = _resource_series(rng)
    _write_csv(
        series_dir / "processes.csv",
        ["t_ns", "host", "pid", "name", "cpu_s", "rss_bytes", "read_bytes", "write_bytes"],
        resources["processes"],
    )
    _write_csv(
        series_dir / "threads.csv",
        ["t_ns", "host", "pid", "tid", "thread", "thread_class", "cpu_s"],
        resources["threads"],
    )
    _write_csv(
        series_dir / "links.csv",
        ["t_ns", "host", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets"],
        resources["links"],
    )

    scenario = Scenario.model_validate(
        {
            "name": "synthetic-precopy",
            "vm": {"memory_mib": RAM_MIB, "vcpus": 2, "accel": "tcg"},
            "workload": {"kind": "memory", "dirty_rate_mib_s": 32, "working_set_mib": 128},
            "network": {"bandwidth_mbit": 500 if failed_check else 1000},
            "phases": {"warmup_s": BASELINE_START - GUEST_READY, "baseline_s": 5, "after_s": 5},
            "load": {"rate_rps": 100, "probe_interval_ms": 1, "sla_ms": 100},
        }
    )
    transferred = int(str(migration_rows[-1][2]))
    total_s = COMPLETED - MIG_START
    result: dict[str, Any] = {
        "schema_version": 1,
        "started_at": "2026-01-01T12:00:00+00:00",
        "scenario": scenario_to_dict(scenario),
        "environment": {
            "tool_version": "0.1.0",
            "testbed": "vmigrate-synthetic",
            "accel": "tcg",
            "accel_reason": "requested",
            "backend": "qemu",
            "qemu_version": "7.2.15",
            "guest_kernel": "6.1.0-31-cloud-amd64",
            "guest_image_digest": "sha256:5f0c0ffee0ddba11",
        },
        "outcome": "completed",
        "error": None,
        "preflight": {  # run with --skip-preflight: no checks, so no estimate (no prediction)
            "skipped": True,
            "unsafe_allowed": False,
            "cpu_model_requested": "qemu64",
            "cpu_model": "qemu64",
            "machine": "pc-q35-10.0",
            "passed": True,
            "checks": [],
        },
        "migration": {
            "strategy": "precopy",
            "tls": False,
            "postcopy_preempt": False,
            "total_time_s": round(total_s, 3),
            "setup_time_s": round(SETUP_END - MIG_START, 3),
            "downtime_reported_ms": 118.0,
            "transferred_bytes": transferred,
            "remaining_bytes": 0,
            "iterations": 4,
            "throughput_mbit_s": round(transferred * 8 / total_s / 1e6, 3),
            "guest_ram_bytes": RAM_MIB * MIB,
            "progress_samples": len(migration_rows),
            "stall_detected": False,
            "disk_copy_bytes": 0,
            "attempts": 1,
            "postcopy_pauses": [],
            "hypervisor_report": {},
            "actions": [],
        },
        "timeline_s": {
            "boot_start": 0.0,
            "guest_ready": GUEST_READY,
            "baseline_start": BASELINE_START,
            "migration_start": MIG_START,
            "migration_end": MIG_END,
            "after_end": AFTER_END,
        },
        "events": [
            {"t_s": round(t, 6), "host": host, "event": name, "name": QMP_NAMES[name], "data": data}
            for t, host, name, data in EVENTS
        ],
        "verification": {
            "running_on": "destination",
            "source_state_after": "postmigrate",
            "service_ok_after": True,
            "memory_checksum_ok": True,
            "memory_writes_intact": True,
            "working_set_pages_checked": 128 * MIB // PAGE,
            "working_set_pages_mismatched": 0,
            "disk_checksum_ok": True,
            "disk_blocks_checked": 1024,
            "disk_blocks_mismatched": 0,
            "boot_id_before": "3f1c2a9e-1b7d-4e0a-9d51-6a2f0c7b8e41",
            "boot_id_after": "3f1c2a9e-1b7d-4e0a-9d51-6a2f0c7b8e41",
            "memory_checksum_before": "9c1e4b7a2d",
            "memory_checksum_after": "9c1e4b7a2d",
        },
        "files": {
            "qemu_log_source": "qemu-source.log",
            "qemu_log_destination": "qemu-destination.log",
            "serial_source": "serial-source.log",
            "serial_destination": "serial-destination.log",
        },
        "clock": {"t0_ns": T0_NS},
        "phases": {
            "windows_s": {name: [start, end] for name, (start, end) in WINDOWS.items()},
            "iterations": [
                {"pass": i + 1, "t_s": round(t - MIG_START, 6)} for i, t in enumerate(PASS_STARTS)
            ],
            "stop_and_copy_s": round(STOP - MIG_START, 6),
            "resume_on_destination_s": round(RESUMED - MIG_START, 6),
            "completion_s": round(COMPLETED - MIG_START, 6),
        },
        "service": _service(requests, probe, scenario.load.sla_ms),
        "outage": _outage(requests, probe, scenario.load.sla_ms),
        "prediction": None,  # no pre-flight estimate ran
        "resources": _resources(resources),
        "data": _data(migration_rows),
        "checks": [],
    }
    result["checks"] = _checks(result)
    (path / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return path
