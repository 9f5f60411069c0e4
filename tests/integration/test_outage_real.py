"""The outage of a real migration, decomposed, with the probe refereed by a packet capture on
the client host's interface (tcpdump beside the probe, the same echoes timed by both).

Its run is also the plain one: pre-copy of a web guest under the default load, which moves and
keeps serving, identity and memory intact."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_migration import assert_moved, run

from vmigrate.testbed.testbed import Testbed


def test_the_outage_decomposed_and_the_probe_agrees_with_the_wire(
    testbed: Testbed, tmp_path: Path
) -> None:
    result = run(testbed, tmp_path, workload={"kind": "web"})
    assert_moved(result, tmp_path)
    # A web guest converges in a few passes, far below the 300 ms downtime limit.
    assert result["migration"]["downtime_reported_ms"] < 300
    # Only the guest's touched pages travel: far less than its RAM, but more than nothing.
    assert result["migration"]["transferred_bytes"] < result["migration"]["guest_ram_bytes"]
    assert {"migration", "resumed"} <= {e["event"] for e in result["events"]}
    assert result["service"]["requests"]["ok"] > 0  # the load ran against the guest
    outage = result["outage"]
    capture = outage["capture"]
    assert capture is not None and capture["error"] is None, capture
    assert capture["kernel_dropped"] == 0
    assert capture["replies_on_wire"] > 1000  # every ms through the whole run
    # The referee: the probe's outage is the wire's to ±2 ms, each echo timed alike.
    assert abs(capture["probe_minus_capture_ms"]) <= 2.0, capture
    assert capture["receive_offset_us"]["max_abs"] < 2000, capture
    checks = {c["name"]: c["ok"] for c in result["checks"]}
    assert checks["probe_agrees_with_capture"] is True
    # The parts: the vCPUs' blackout holds the hypervisor's own figure (up to its bookkeeping)
    # and the client's outage holds the blackout; the network finds the guest after it runs.
    assert outage["blackout_ms"] > 0
    assert outage["hypervisor_downtime_ms"] <= outage["blackout_ms"] + 5
    # The client's outage is the switch-over's: it begins at the last reply before it (a reply
    # the guest made before the stop may still arrive after it) and ends at the first after it.
    parts = outage["blackout_ms"] + outage["reconvergence_ms"] - outage["stop_to_last_reply_ms"]
    assert outage["network_outage_ms"] == pytest.approx(parts, abs=2.0)
    assert outage["service_outage_ms"] is not None and outage["brownout_ms"] is not None
    waterfall = outage["waterfall_s"]
    order = ("last_pass", "stop", "ram_saved", "devices_saved", "source_done",
             "destination_loaded", "destination_running", "first_packet")  # fmt: skip
    moments = [waterfall[key] for key in order]
    assert None not in moments and moments == sorted(moments), waterfall
    assert waterfall["first_response"] >= waterfall["destination_running"]
    # QEMU announces the guest (RARP) from the destination as it starts it: the wire saw it.
    assert waterfall["announce"] is not None, capture
    assert abs(waterfall["announce"] - waterfall["destination_running"]) < 0.02, waterfall
    assert (tmp_path / "series" / "capture.pcap").stat().st_size > 10_000
