"""Real live migrations on the embedded testbed: the VM moves, keeps its identity and memory.

The plain pre-copy of a web guest is test_outage_real.py's run, that of a guest dirtying its
memory test_tls.py's control run (their checks are there)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vmigrate.config import validate_scenario
from vmigrate.experiment import SilentObserver, run_experiment
from vmigrate.testbed.testbed import Testbed

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs/result.schema.json").read_text())
# No warm-up: the pre-flight estimate (dirty rate, link) runs between the meters' start and the
# baseline window anyway, and the memory workload touches its working set before it dirties.
QUICK = {"phases": {"warmup_s": 0, "baseline_s": 1, "after_s": 1}}
# Dirties 50 MiB/s, twice what 200 Mbit/s (~24 MiB/s) carries: pre-copy alone never converges.
# The 64 MiB working set is re-sent each pass; a larger one or a slower link only makes each
# pass (and the test) longer.
OUTRUNS_THE_LINK = {"kind": "memory", "working_set_mib": 64, "dirty_rate_mib_s": 50}


PREEMPT_THREAD = "mig/dst/preempt"  # the destination QEMU's thread for preempted pages


def threads_seen(out: Path, host: str) -> set[str]:
    """The names of the threads the run's meters saw on `host`."""
    with (out / "series" / "threads.csv").open() as rows:
        return {row["thread"] for row in csv.DictReader(rows) if row["host"] == host}


def run(testbed: Testbed, out: Path, **sections: Any) -> dict[str, Any]:
    scenario = validate_scenario({**QUICK, "vm": {"accel": "tcg"}, **sections})
    result = run_experiment(scenario, out, testbed, SilentObserver()).model_dump(mode="json")
    jsonschema.validate(result, SCHEMA)
    assert json.loads((out / "result.json").read_text()) == result
    return result


def assert_moved(result: dict[str, Any], out: Path) -> None:
    assert result["outcome"] == "completed", result["error"]
    ver = result["verification"]
    assert ver["running_on"] == "destination"
    assert ver["source_state_after"] == "postmigrate"
    assert ver["service_ok_after"] is True
    assert ver["boot_id_before"] == ver["boot_id_after"]
    assert ver["memory_checksum_ok"] is True
    assert ver["memory_writes_intact"] is True, ver
    assert ver["disk_checksum_ok"] is True, ver
    assert ver["disk_blocks_checked"] == 1024
    mig = result["migration"]
    assert mig["total_time_s"] > 0
    assert mig["downtime_reported_ms"] >= 0
    assert mig["transferred_bytes"] > 0
    assert mig["throughput_mbit_s"] > 0
    for name in ("qemu-source.log", "qemu-destination.log", "serial-source.log",
                 "serial-destination.log"):  # fmt: skip
        assert (out / name).exists(), name
    assert "VMIGRATE-AGENT-READY" in (out / "serial-source.log").read_text()


def test_cold_migration_pauses_an_idle_guest_for_the_whole_transfer(
    testbed: Testbed, tmp_path: Path
) -> None:
    result = run(testbed, tmp_path, workload={"kind": "idle"}, migration={"strategy": "cold"})
    assert_moved(result, tmp_path)
    mig = result["migration"]
    # Cold: the VM is paused from start to resume, so downtime equals the total time.
    assert mig["downtime_reported_ms"] == pytest.approx(mig["total_time_s"] * 1000, rel=0.01)
    # Only the guest's touched pages travel: far less than its RAM, but more than nothing.
    assert mig["transferred_bytes"] < mig["guest_ram_bytes"]
    # An idle guest gets no HTTP load, only the probe.
    assert result["service"]["requests"]["sent"] == 0 and result["service"]["probe_sent"] > 0
    events = {e["event"] for e in result["events"]}
    assert {"migration", "resumed"} <= events


def test_timeout_cancels_and_the_vm_keeps_serving_on_the_source(
    testbed: Testbed, tmp_path: Path
) -> None:
    # Never done in 3 s: its first pass alone takes ~8 s, and pre-copy cannot converge. (The
    # link is not shaped lower: at 20 Mbit/s the guest's NFS disk crawls too, and every check
    # of it with it.)
    result = run(
        testbed,
        tmp_path,
        network={"bandwidth_mbit": 200},
        workload=OUTRUNS_THE_LINK,
        migration={"timeout_s": 3},
    )
    testbed.shape(1000)
    assert result["outcome"] == "timeout"
    ver = result["verification"]
    assert ver["running_on"] == "source"
    assert ver["service_ok_after"] is True
    assert ver["memory_checksum_ok"] is True


def numbers(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every leaf of a JSON document with its dotted path."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in numbers(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in numbers(v, f"{path}[{i}]")]
    return [(path, node)]


def test_web_under_load_gets_the_whole_bill(testbed: Testbed, tmp_path: Path) -> None:
    result = run(
        testbed,
        tmp_path,
        workload={"kind": "web"},
        load={"rate_rps": 100},
        phases={"warmup_s": 1, "baseline_s": 3, "after_s": 3},
    )
    assert_moved(result, tmp_path)
    for section in ("phases", "service", "resources", "data", "checks"):
        assert result[section], section
    # Every figure is finite and never negative where negative is meaningless.
    for path, value in numbers({k: result[k] for k in ("service", "resources", "data")}):
        if isinstance(value, float):
            assert value == value and abs(value) != float("inf"), path
            if not path.endswith(".extra"):
                assert value >= 0, path
    service = result["service"]
    for window in ("baseline", "during", "after"):
        stats = service["latency_ms"][window]
        assert stats is not None and stats["count"] > 0, window
        assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["p999"] <= stats["max"]
        assert service["throughput_rps"][window] > 0
    requests = service["requests"]
    assert requests["sent"] >= 100 * 7 * 0.9  # 100 req/s for 1+3 s plus migration plus 3 s
    assert requests["ok"] >= requests["sent"] * 0.95
    # The client saw the guest go away at least as long as QEMU paused it.
    assert service["observed_downtime_ms"] >= result["migration"]["downtime_reported_ms"] - 1
    assert service["probe_sent"] > 0
    hosts = result["resources"]["hosts"]
    # The source sent the guest's memory; the destination received it.
    transferred = result["migration"]["transferred_bytes"]
    assert hosts["source"]["net_tx_bytes"]["during"] >= transferred
    assert hosts["destination"]["net_rx_bytes"]["during"] >= transferred
    assert hosts["source"]["cpu_seconds"]["during"] > 0
    assert hosts["destination"]["cpu_seconds"]["during"] > 0
    assert hosts["destination"]["rss_bytes"]["after"] > hosts["destination"]["rss_bytes"]["before"]
    assert "ganesha.nfsd" in hosts["storage"]["processes"]
    assert set(hosts["source"]["qemu_cpu_seconds"]) == {"vcpu", "migration", "main", "other"}
    assert hosts["source"]["qemu_cpu_seconds"]["migration"]["during"] > 0
    assert [c["name"] for c in result["checks"] if c["ok"] is not True] == []
    assert result["data"]["transferred_bytes"] == transferred
    assert len(result["phases"]["iterations"]) == result["migration"]["iterations"]
    assert (tmp_path / "report.html").stat().st_size > 100_000
    for series in ("migration", "events", "processes", "threads", "links", "probe", "requests"):
        assert (tmp_path / "series" / f"{series}.csv").exists(), series


@pytest.mark.parametrize(
    "migration",
    [
        {"strategy": "auto-converge", "cpu_throttle_initial_pct": 30},
        {"strategy": "xbzrle", "xbzrle_cache_mib": 32},
        {"strategy": "multifd", "multifd_channels": 2, "multifd_compression": "zstd"},
    ],
    ids=lambda m: m["strategy"],
)
def test_each_precopy_variant_moves_a_dirtying_guest(
    testbed: Testbed, tmp_path: Path, migration: dict[str, Any]
) -> None:
    result = run(
        testbed,
        tmp_path,
        workload={"kind": "memory", "working_set_mib": 64, "dirty_rate_mib_s": 20},
        migration=migration,
    )
    assert_moved(result, tmp_path)
    assert result["verification"]["working_set_pages_checked"] == 64 * 1024 * 1024 // 4096
    assert result["migration"]["actions"] == []
    assert result["data"]["postcopy_bytes"] == 0


def test_hybrid_moves_a_guest_that_dirties_faster_than_the_link(
    testbed: Testbed, tmp_path: Path
) -> None:
    """Pre-copy passes, then post-copy, its faulted pages on a connection of their own
    (postcopy-preempt: the destination QEMU runs its preempt thread). (Post-copy from the start,
    without preempt, is test_tls.py's test_tls_encrypts_postcopy run, and test_faults.py's under
    faults.)"""
    # 50 MiB/s of dirtying over a 200 Mbit/s link (~24 MiB/s): pre-copy alone cannot converge.
    result = run(
        testbed,
        tmp_path,
        network={"bandwidth_mbit": 200},
        workload=OUTRUNS_THE_LINK,
        migration={
            "strategy": "hybrid",
            "postcopy_after_iterations": 2,
            "postcopy_preempt": True,
            "timeout_s": 90,
        },
    )
    testbed.shape(1000)
    assert_moved(result, tmp_path)
    assert result["migration"]["postcopy_preempt"] is True
    assert PREEMPT_THREAD in threads_seen(tmp_path, "destination")
    assert [a["action"] for a in result["migration"]["actions"]] == ["postcopy"]
    events = [e["data"].get("status") for e in result["events"] if e["event"] == "migration"]
    assert "postcopy-active" in events
    assert result["data"]["postcopy_bytes"] > 0
    switched_at = result["migration"]["actions"][0]["t_s"]
    start = result["phases"]["windows_s"]["during"][0]
    passes_before = [p for p in result["phases"]["iterations"] if start + p["t_s"] < switched_at]
    assert len(passes_before) >= 2


def test_a_stall_is_rescued_by_postcopy(testbed: Testbed, tmp_path: Path) -> None:
    result = run(
        testbed,
        tmp_path,
        network={"bandwidth_mbit": 200},
        workload=OUTRUNS_THE_LINK,
        migration={"on_stall": "postcopy", "stall_iterations": 2, "timeout_s": 90},
    )
    testbed.shape(1000)
    assert_moved(result, tmp_path)
    mig = result["migration"]
    assert mig["stall_detected"] is True
    assert [a["action"] for a in mig["actions"]] == ["stall detected (no progress)", "postcopy"]
    assert result["data"]["postcopy_bytes"] > 0


def test_a_stall_is_rescued_by_restarting_with_auto_converge(
    testbed: Testbed, tmp_path: Path
) -> None:
    result = run(
        testbed,
        tmp_path,
        network={"bandwidth_mbit": 200},
        workload=OUTRUNS_THE_LINK,
        migration={
            "on_stall": "auto-converge",
            "stall_iterations": 2,
            # 80 %: the guest's 50 MiB/s becomes 10, well under the link's ~24, so the
            # second attempt converges within a few passes of the throttle (at 60 % it
            # needed one more step of it, ~10 s)
            "cpu_throttle_initial_pct": 80,
            "cpu_throttle_increment_pct": 20,
            "timeout_s": 90,
        },
    )
    testbed.shape(1000)
    assert_moved(result, tmp_path)
    mig = result["migration"]
    assert mig["stall_detected"] is True
    assert mig["attempts"] == 2
    assert [a["action"] for a in mig["actions"]] == [
        "stall detected (no progress)",
        "restart with auto-converge",
    ]
    # The throttle did the rescuing, and the abandoned attempt's bytes are on the bill.
    progress = (tmp_path / "series" / "migration.csv").read_text().splitlines()
    header = progress[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in progress[1:]]
    assert {r["attempt"] for r in rows} == {"1", "2"}
    assert max(int(r["cpu_throttle_pct"] or 0) for r in rows if r["attempt"] == "2") >= 80
    assert all(int(r["cpu_throttle_pct"] or 0) == 0 for r in rows if r["attempt"] == "1")
    first = max(int(r["transferred_bytes"]) for r in rows if r["attempt"] == "1")
    assert mig["transferred_bytes"] > first >= 64 * 1024 * 1024
    assert result["data"]["transferred_bytes"] == mig["transferred_bytes"]
    checks = {c["name"]: c["ok"] for c in result["checks"]}
    assert checks["source_uplink_carried_the_migration"] is True


def test_local_storage_is_copied_and_intact(testbed: Testbed, tmp_path: Path) -> None:
    result = run(testbed, tmp_path, storage={"mode": "local"}, workload={"kind": "web"})
    assert_moved(result, tmp_path)
    mig = result["migration"]
    assert [a["action"] for a in mig["actions"]] == ["disk mirror started", "disk mirror ready"]
    assert mig["disk_copy_bytes"] >= 256 * 1024 * 1024
    # The 4 MiB the guest wrote travelled with the RAM: the source's uplink carried both.
    source_tx = result["resources"]["hosts"]["source"]["net_tx_bytes"]["during"]
    assert source_tx >= mig["transferred_bytes"] + 4 * 1024 * 1024
    assert not list((testbed.export_dir).glob("*.qcow2")), "local storage must not use NFS"
