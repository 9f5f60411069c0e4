"""The outage a migration causes, decomposed, each part from its own instrument:

- blackout: the VM's vCPUs stopped on the source → running on the destination (both
  hypervisors' events, on our clock);
- reconvergence: running on the destination → the first probe reply the client receives (the
  guest's announcement reaching the switch, the path to the client);
- network outage: the longest time the client received no probe reply; it is blackout +
  reconvergence - stop-to-last-reply: the guest's replies made before its vCPUs stopped can
  still reach the client after the stop (queued in QEMU's network backend: up to 9 ms seen);
- service outage: the longest time no HTTP response completed;
- brownout: how long some request of the service was slower than the SLA (or failed);
- and, when the run captured packets, the probe refereed by the wire (analysis/referee.py);

beside them the hypervisor's own figure, and the switch-over's waterfall: its moments (last
pass, stop, device state, stream done, destination running, the guest's announcement, first
packet, first response) on one time axis, in seconds since the migration started."""

from __future__ import annotations

from typing import Any

import numpy as np

from vmigrate.analysis.service import observed_downtime
from vmigrate.analysis.windows import Array, Mask, Windows, finite_or_none

Event = dict[str, Any]


def _times(events: list[Event], host: str, kind: str, **data: Any) -> list[float]:
    """The times (s since t0) of `host`'s events of `kind` whose data holds `data`."""
    return [
        float(e["t_s"])
        for e in events
        if e["host"] == host
        and e["event"] == kind
        and all(e.get("data", {}).get(k) == v for k, v in data.items())
    ]


def _last_before(times: list[float], limit: float) -> float | None:
    earlier = [t for t in times if t <= limit]
    return max(earlier) if earlier else None


def _first_after(times: list[float], limit: float) -> float | None:
    later = [t for t in times if t >= limit]
    return min(later) if later else None


#: QEMU's own checkpoints of the switch-over (hypervisor/qemu_checkpoints.py): the moment's key,
#: the host and the checkpoint's names (pre-copy's, post-copy's).
CHECKPOINTS = (
    ("ram_saved", "source", ("src-iterable-saved",)),
    ("devices_saved", "source", ("src-non-iterable-saved",)),
    (
        "destination_loaded",
        "destination",
        ("dst-precopy-loadvm-completed", "dst-postcopy-bh-enter"),
    ),
)


def switchover_moments(events: list[Event]) -> dict[str, float | None]:
    """The switch-over's moments (s since t0): the destination's first RESUME, the source's last
    STOP before it, the last pass that began while the vCPUs still ran, the source entering its
    device-state phase and finishing the stream, and (QEMU only) its own checkpoints: the last
    RAM and the device state written, the destination done loading. None where a hypervisor gave
    no such event."""
    resumed = _times(events, "destination", "resumed")
    moments: dict[str, float | None] = dict.fromkeys(
        ("last_pass", "stop", "device_state", "ram_saved", "devices_saved", "source_done",
         "destination_loaded", "destination_running")
    )  # fmt: skip
    if not resumed:
        return moments
    running = min(resumed)
    stop = _last_before(_times(events, "source", "stopped"), running)
    moments["destination_running"] = running
    moments["stop"] = stop
    if stop is None:
        return moments
    passes = [t for t in _times(events, "source", "migration_pass") if t < stop]
    moments["last_pass"] = max(passes) if passes else None
    moments["device_state"] = _first_after(
        _times(events, "source", "migration", status="device"), stop
    )
    moments["source_done"] = _first_after(
        _times(events, "source", "migration", status="completed"), stop
    )
    for key, host, names in CHECKPOINTS:
        found = [t for name in names for t in _times(events, host, "checkpoint", checkpoint=name)]
        moments[key] = _first_after(found, stop)
    return moments


def _union_ms(starts: Array, ends: Array, window: tuple[int, int]) -> float:
    """Total length (ms) of the union of [start, end] intervals, clipped to `window` (ns)."""
    lo, hi = float(window[0]), float(window[1])
    clipped = sorted(
        (max(a, lo), min(b, hi))
        for a, b in zip(starts, ends, strict=True)
        if min(b, hi) > max(a, lo)
    )
    total, reached = 0.0, lo
    for start, end in clipped:
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total / 1e6


def brownout_ms(
    intended: Array, done: Array, ok: Mask, sla_ms: float, window: tuple[int, int]
) -> float | None:
    """How long (ms, within `window`) some request was being served slower than `sla_ms` or
    failed: the union of [intended send, completion] over those requests (a request that never
    completed counts until the window's end). None without requests."""
    if len(intended) == 0:
        return None
    latency_ms = (done - intended) / 1e6
    late = ~ok | np.isnan(done) | (latency_ms > sla_ms)
    ends = np.where(np.isnan(done), float(window[1]), done)
    return _union_ms(intended[late], ends[late], window)


def client_moments(
    moments: dict[str, float | None], recv_ns: Array, done: Array, request_ok: Mask, t0: int
) -> tuple[float | None, float | None, float | None]:
    """The first probe reply and response after the destination ran, and the last reply before."""
    running = moments["destination_running"]
    if running is None:
        return None, None, None
    replies = (recv_ns[~np.isnan(recv_ns)] - t0) / 1e9 if len(recv_ns) else np.array([])
    responses = (done[request_ok & ~np.isnan(done)] - t0) / 1e9 if len(done) else np.array([])
    first = _first_after(list(replies), running)
    first_response = _first_after(list(responses), running)
    last_reply = _last_before([t for t in replies if first is None or t < first], running)
    return first, first_response, last_reply


def span_ms(moments: dict[str, float | None], a: str, b: str) -> float | None:
    """Milliseconds from moment `a` to moment `b`; None unless both happened."""
    first, then = moments.get(a), moments.get(b)
    return (
        finite_or_none((then - first) * 1000.0) if first is not None and then is not None else None
    )


def silences_ms(
    send_ns: Array,
    recv_ns: Array,
    intended: Array,
    done: Array,
    request_ok: Mask,
    window: tuple[int, int],
) -> tuple[float | None, float | None]:
    """The longest time in `window` without a probe reply, and without a successful response."""
    network_ms, _, _, _ = observed_downtime(send_ns, recv_ns, window)
    service_ms, _, _, _ = observed_downtime(intended, np.where(request_ok, done, np.nan), window)
    return network_ms, service_ms


def outage_section(
    events: list[Event],
    probe: dict[str, Array],
    requests: dict[str, Array],
    request_ok: Mask,
    windows: Windows,
    sla_ms: float,
    reported_ms: float | None,
    capture: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `outage` section of result.json (see the module's docstring); `capture`: the
    probe refereed by the packet capture (analysis/referee.py), when the run made one."""
    moments = switchover_moments(events)
    send_ns = probe.get("send_ns", np.array([]))
    recv_ns = probe.get("recv_ns", np.array([]))
    intended = requests.get("intended_ns", np.array([]))
    done = requests.get("done_ns", np.array([]))
    t0, start_s = windows.t0_ns, (windows.during[0] - windows.t0_ns) / 1e9
    whole = (windows.during[0], windows.after[1])
    moments["announce"] = capture.get("guest_announce_s") if capture else None
    moments["first_packet"], moments["first_response"], last_reply = client_moments(
        moments, recv_ns, done, request_ok, t0
    )
    stop = moments["stop"]
    network_ms, service_ms = silences_ms(
        send_ns, recv_ns, intended, done, request_ok, windows.during
    )
    return {
        "blackout_ms": span_ms(moments, "stop", "destination_running"),
        "reconvergence_ms": span_ms(moments, "destination_running", "first_packet"),
        "stop_to_last_reply_ms": finite_or_none((last_reply - stop) * 1000.0)
        if last_reply is not None and stop is not None
        else None,
        "network_outage_ms": finite_or_none(network_ms),
        "service_outage_ms": finite_or_none(service_ms),
        "brownout_ms": finite_or_none(brownout_ms(intended, done, request_ok, sla_ms, whole)),
        "hypervisor_downtime_ms": finite_or_none(reported_ms),
        "sla_ms": sla_ms,
        "capture": capture,
        "waterfall_s": {
            name: finite_or_none(t - start_s, 6) if t is not None else None
            for name, t in moments.items()
        },
    }
