"""The outage decomposed, on a synthetic switch-over with known answers: the source stops at
14.000 s, the destination runs at 14.100 s, probes (every 1 ms) answer again from 14.120 s,
HTTP requests (every 10 ms, 5 ms each) complete again from 14.300 s and stay slow until 14.600."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vmigrate.analysis.outage import brownout_ms, outage_section, switchover_moments
from vmigrate.analysis.windows import Windows

S = 1_000_000_000
T0 = 1_000 * S
WINDOWS = Windows.from_marks(
    T0, {"baseline_start": 0.0, "migration_start": 10.0, "migration_end": 20.0, "after_end": 30.0}
)


def event(t_s: float, host: str, kind: str, **data: Any) -> dict[str, Any]:
    return {"t_s": t_s, "host": host, "event": kind, "name": kind.upper(), "data": data}


EVENTS = [
    event(10.0, "source", "migration_pass", **{"pass": 1}),
    event(13.5, "source", "migration_pass", **{"pass": 2}),
    event(14.0, "source", "stopped"),
    event(14.0005, "source", "migration", status="device"),
    event(14.001, "source", "migration_pass", **{"pass": 3}),  # the final pass, stopped
    event(14.03, "source", "checkpoint", checkpoint="src-iterable-saved"),
    event(14.079, "source", "checkpoint", checkpoint="src-non-iterable-saved"),
    event(14.08, "source", "migration", status="completed"),
    event(14.099, "destination", "checkpoint", checkpoint="dst-precopy-loadvm-completed"),
    event(14.1, "destination", "resumed"),
]


def probes() -> dict[str, np.ndarray]:
    send = T0 + np.arange(0, 30 * S, 1e6)
    recv = send + 200_000.0
    recv[(send >= T0 + 14.0 * S) & (send < T0 + 14.12 * S)] = np.nan
    return {"send_ns": send, "recv_ns": recv}


def requests() -> tuple[dict[str, np.ndarray], np.ndarray]:
    intended = T0 + np.arange(0, 30 * S, 10e6)
    done = intended + 5e6
    stuck = (intended >= T0 + 13.99 * S) & (intended < T0 + 14.3 * S)
    done[stuck] = T0 + 14.3 * S + (intended[stuck] - T0 - 13.99 * S) / 10  # served late, in order
    slow = (intended >= T0 + 14.3 * S) & (intended < T0 + 14.6 * S)
    done[slow] = intended[slow] + 150e6  # over a 100 ms SLA
    reqs = {"intended_ns": intended, "done_ns": done, "status": np.full(len(intended), 200.0)}
    return reqs, np.ones(len(intended), dtype=bool)


def test_the_switchover_moments_come_from_both_hypervisors_events() -> None:
    moments = switchover_moments(EVENTS)
    assert moments == {
        "last_pass": 13.5,
        "stop": 14.0,
        "device_state": 14.0005,
        "ram_saved": 14.03,
        "devices_saved": 14.079,
        "source_done": 14.08,
        "destination_loaded": 14.099,
        "destination_running": 14.1,
    }


def test_no_resume_on_the_destination_gives_no_moments() -> None:
    assert set(switchover_moments(EVENTS[:-1]).values()) == {None}


def test_a_backend_without_checkpoints_gives_the_events_moments_only() -> None:
    moments = switchover_moments([e for e in EVENTS if e["event"] != "checkpoint"])
    assert moments["ram_saved"] is None and moments["destination_loaded"] is None
    assert moments["stop"] == 14.0 and moments["destination_running"] == 14.1


def test_the_outage_decomposed() -> None:
    reqs, ok = requests()
    out = outage_section(EVENTS, probes(), reqs, ok, WINDOWS, 100.0, 70.0)
    assert out["blackout_ms"] == pytest.approx(100.0)
    assert out["reconvergence_ms"] == pytest.approx(20.2, abs=0.01)  # the first reply, RTT 0.2
    assert out["network_outage_ms"] == pytest.approx(121.0, abs=0.01)
    assert out["hypervisor_downtime_ms"] == 70.0
    # The last response before the stall completed at 13.985 s, the next one at 14.3 s.
    assert out["service_outage_ms"] == pytest.approx(315.0, abs=0.01)
    # Late from 13.99 (the first stuck request) to 14.59 + 150 ms (the last slow one done).
    assert out["brownout_ms"] == pytest.approx(750.0, abs=0.01)
    waterfall = out["waterfall_s"]
    assert waterfall["stop"] == pytest.approx(4.0)
    assert waterfall["first_packet"] == pytest.approx(4.1202)
    assert waterfall["first_response"] == pytest.approx(4.3)
    assert waterfall["announce"] is None and out["capture"] is None  # no capture made
    moments = [v for v in waterfall.values() if v is not None]
    assert moments == sorted(moments), "the waterfall's moments come in order"


def test_the_parts_are_consistent_with_the_whole() -> None:
    reqs, ok = requests()
    out = outage_section(EVENTS, probes(), reqs, ok, WINDOWS, 100.0, 70.0)
    # The client's outage covers the blackout and the reconvergence, from the last reply (the
    # echo of the probe sent 1 ms before the stop, 0.8 ms before it) to the first after.
    assert out["stop_to_last_reply_ms"] == pytest.approx(-0.8, abs=0.01)
    parts = out["blackout_ms"] + out["reconvergence_ms"] - out["stop_to_last_reply_ms"]
    assert out["network_outage_ms"] == pytest.approx(parts, abs=0.01)
    assert out["hypervisor_downtime_ms"] <= out["blackout_ms"] <= out["network_outage_ms"]


def test_replies_still_leaving_the_source_after_the_stop_shorten_the_client_outage() -> None:
    reqs, ok = requests()
    late = probes()
    queued = (late["send_ns"] >= T0 + 13.99 * S) & (late["send_ns"] < T0 + 14.0 * S)
    late["recv_ns"][queued] = T0 + 14.006 * S  # the guest's last replies, flushed 6 ms late
    out = outage_section(EVENTS, late, reqs, ok, WINDOWS, 100.0, 70.0)
    assert out["stop_to_last_reply_ms"] == pytest.approx(6.0)
    assert out["network_outage_ms"] == pytest.approx(114.2, abs=0.01)
    assert out["blackout_ms"] == pytest.approx(100.0)  # the vCPUs' pause is not moved


def test_brownout_counts_overlapping_slow_requests_once_and_failed_ones_to_the_end() -> None:
    intended = np.array([0.0, 50e6, 500e6, 900e6])
    done = np.array([200e6, 250e6, 510e6, np.nan])
    ok = np.array([True, True, True, False])
    # [0, 250] ms (two overlapping slow requests) + [900, 1000] (never done: to the window's end)
    assert brownout_ms(intended, done, ok, 100.0, (0, 1_000_000_000)) == pytest.approx(350.0)
    assert brownout_ms(np.array([]), np.array([]), ok[:0], 100.0, (0, 1)) is None


def test_a_run_without_clients_has_no_client_figures() -> None:
    empty = {"send_ns": np.array([]), "recv_ns": np.array([])}
    out = outage_section(EVENTS, empty, {}, np.array([], dtype=bool), WINDOWS, 100.0, None)
    assert out["blackout_ms"] == pytest.approx(100.0)
    assert out["network_outage_ms"] is None and out["service_outage_ms"] is None
    assert out["reconvergence_ms"] is None and out["brownout_ms"] is None
