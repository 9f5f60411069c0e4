"""The soak's own logic, without a VM: strategies in turn, the hop back's target, vmigrate's
footprint from /proc, the verdict and the summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from rich.console import Console

from vmigrate.guest.facts import GuestFacts, integrity
from vmigrate.hypervisor.base import other_host
from vmigrate.migration.orchestrator import Outcome
from vmigrate.report.soak import hop_line, soak_table
from vmigrate.soak import (
    STRATEGIES,
    Hop,
    SelfSample,
    SoakReport,
    parse_rss_bytes,
    sample_self,
    strategy_for,
)

MIB = 1024 * 1024


def test_strategies_take_turns_and_start_over() -> None:
    assert [strategy_for(i) for i in range(1, 8)] == [*STRATEGIES, STRATEGIES[0]]
    assert strategy_for(50) == STRATEGIES[49 % len(STRATEGIES)]
    assert len(set(STRATEGIES)) >= 4 and "cold" not in STRATEGIES
    with pytest.raises(ValueError):
        strategy_for(0)


def test_a_hop_goes_to_the_host_the_vm_is_not_on() -> None:
    assert other_host("source") == "destination"
    assert other_host("destination") == "source"
    with pytest.raises(ValueError):
        other_host("storage")


def test_rss_from_proc_status() -> None:
    status = "Name:\tvmigrate\nVmPeak:\t  999 kB\nVmRSS:\t   75812 kB\nRssAnon:\t 1 kB\n"
    assert parse_rss_bytes(status) == 75812 * 1024
    with pytest.raises(ValueError):
        parse_rss_bytes("Name:\tkthreadd\n")  # a kernel thread has no VmRSS


def test_footprint_of_a_process_directory(tmp_path: Path) -> None:
    (tmp_path / "status").write_text("VmRSS:\t 2048 kB\n")
    (tmp_path / "fd").mkdir()
    for fd in ("0", "1", "2", "7"):
        (tmp_path / "fd" / fd).touch()
    assert sample_self(tmp_path) == SelfSample(rss_bytes=2 * MIB, open_fds=4)
    own = sample_self()
    assert own.rss_bytes > 0 and own.open_fds >= 3


def hop(index: int, rss_mib: float = 70.0, **changes: object) -> Hop:
    leaving = "source" if index % 2 else "destination"
    fields: dict[str, object] = {
        "index": index,
        "strategy": strategy_for(index),
        "from_host": leaving,
        "to_host": other_host(leaving),
        "outcome": Outcome.COMPLETED,
        "running_on": other_host(leaving),
        "total_time_s": 1.0,
        "downtime_ms": 50.0,
        "transferred_bytes": 40 * MIB,
        "wall_s": 2.0,
        "footprint": SelfSample(rss_bytes=int(rss_mib * MIB), open_fds=18),
    }
    return Hop.model_validate({**fields, **changes})


def report(hops: list[Hop], planned: int | None = None, **changes: object) -> SoakReport:
    return SoakReport.model_validate(
        {
            "testbed": "vmsoak",
            "scenario": "web",
            "hops_planned": len(hops) if planned is None else planned,
            "strategies": list(STRATEGIES),
            "hops": [h.model_dump() for h in hops],
            "start": SelfSample(rss_bytes=70 * MIB, open_fds=18).model_dump(),
            **changes,
        }
    )


def test_a_clean_soak_passes_and_reports_its_growth() -> None:
    done = report([hop(1), hop(2), hop(3, rss_mib=71.5)])
    assert done.ok
    assert (done.hops_moved, done.failures, done.integrity_failures) == (3, 0, 0)
    assert done.rss_growth_mib == pytest.approx(1.5)
    text = render(done)
    assert "3/3" in text and "+1.5 MiB" in text and "pass" in text


@pytest.mark.parametrize(
    ("hops", "planned", "changes", "failures", "integrity_failures"),
    [
        # the migration failed: the VM stayed on the host it was on
        ([hop(1), hop(2, outcome=Outcome.FAILED, running_on="destination")], None, {}, 1, 0),
        # completed, but the backend says the VM runs elsewhere
        ([hop(1, running_on="source")], None, {}, 1, 0),
        # the guest lost a disk write
        ([hop(1, integrity_failures=["disk_checksum_ok"])], None, {}, 0, 1),
        # the soak stopped early: hops never made are failures too
        ([hop(1)], 3, {"error": "after hop 1 the VM runs nowhere"}, 2, 0),
        # every hop fine, but the testbed left a namespace behind
        ([hop(1)], None, {"leftovers": ["netns vmsoak-source"]}, 0, 0),
    ],
)
def test_what_fails_a_soak(
    hops: list[Hop],
    planned: int | None,
    changes: dict[str, object],
    failures: int,
    integrity_failures: int,
) -> None:
    done = report(hops, planned, **changes)
    assert not done.ok
    assert (done.failures, done.integrity_failures) == (failures, integrity_failures)
    assert "FAIL" in render(done)


def test_integrity_is_judged_against_the_guest_before() -> None:
    before = GuestFacts(boot_id="b1", service_ok=True, checksum="c1")
    whole = GuestFacts(
        boot_id="b1",
        service_ok=True,
        checksum="c1",
        pages_mismatched=0,
        disk_blocks_checked=1024,
        disk_blocks_mismatched=0,
    )
    assert integrity(before, whole).ok and integrity(before, whole).failures() == []
    rebooted = dataclasses.replace(whole, boot_id="b2")
    assert integrity(before, rebooted).failures() == ["same_guest"]
    silent = GuestFacts(error="no answer")  # a guest that does not answer fails everything
    assert len(integrity(before, silent).failures()) == 4


def test_a_hop_line_says_direction_strategy_integrity_and_footprint() -> None:
    line = plain(hop_line(hop(2, switched_to_postcopy=True), 50))
    assert "hop  2/50 dst→src postcopy→post" in line
    assert "intact" in line and "rss   70.0 MiB" in line and "fds 18" in line
    failed = plain(hop_line(hop(3, integrity_failures=["memory_checksum_ok"], error="x"), 50))
    assert "✗" in failed and "memory_checksum_ok" in failed


def render(done: SoakReport) -> str:
    console = Console(record=True, width=200)
    console.print(soak_table(done))
    return console.export_text()


def plain(markup: str) -> str:
    console = Console(record=True, width=300)
    console.print(markup, highlight=False)
    return console.export_text()
