"""A short soak for real: one web guest under load hops source → destination → source → …
in a testbed of its own, a different strategy each hop; the guest comes through every hop
whole, runs where it was sent (the hypervisors' own word), and nothing is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TESTBED

from vmigrate.config import validate_scenario
from vmigrate.experiment import SilentObserver
from vmigrate.migration.orchestrator import Outcome
from vmigrate.soak import STRATEGIES, Hop, SoakReport, run_soak
from vmigrate.testbed.testbed import Testbed

HOPS = 4
NAME = TESTBED[:7] + "s"  # a testbed of the soak's own, beside the session's


class RecordingObserver(SilentObserver):
    """Keeps the hops as the soak announces them."""

    def __init__(self) -> None:
        self.hops: list[Hop] = []

    def hop(self, hop: Hop, planned: int) -> None:
        self.hops.append(hop)


@pytest.mark.parametrize(("backend", "hops"), [("qemu", HOPS), ("libvirt", 2)])
def test_a_guest_under_load_hops_back_and_forth(tmp_path: Path, backend: str, hops: int) -> None:
    bed = Testbed(NAME)
    bed.down()
    scenario = validate_scenario(
        {
            "name": "soak",
            "vm": {"accel": "tcg"},
            "hosts": {"backend": backend},
            "workload": {"kind": "web"},
            "load": {"rate_rps": 100},
            "phases": {"warmup_s": 1},
        }
    )
    observer = RecordingObserver()
    report = run_soak(scenario, tmp_path, bed, observer, hops=hops, pause_s=0.2)

    assert report.error is None
    assert [h.index for h in observer.hops] == list(range(1, hops + 1))
    assert [h.strategy for h in report.hops] == list(STRATEGIES[:hops])
    for hop in report.hops:
        assert hop.outcome == Outcome.COMPLETED, hop.error
        leaving = "source" if hop.index % 2 else "destination"
        assert (hop.from_host, hop.to_host) == (
            leaving,
            "destination" if hop.index % 2 else "source",
        )
        assert hop.running_on == hop.to_host  # by the hypervisors' word, after the hop
        assert hop.integrity_failures == [], hop
        assert hop.transferred_bytes > 0
        assert hop.footprint.rss_bytes > 0 and hop.footprint.open_fds > 0
    assert report.hops_moved == hops and report.integrity_failures == 0
    assert report.leftovers == []
    assert bed.leftovers() == []
    assert report.ok
    assert report.start is not None and report.rss_growth_mib is not None
    saved = SoakReport.model_validate(json.loads((tmp_path / "soak.json").read_text()))
    assert saved == report
