"""Pre-flight on the real testbed, and the two classic failures reproduced: a guest CPU newer
than the destination (refused, VM keeps serving on the source; fixed by the baseline model) and
a shared disk with a cache mode that is unsafe to migrate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
from conftest import leftovers

from vmigrate.config import validate_scenario
from vmigrate.experiment import SilentObserver, run_experiment, run_preflight
from vmigrate.hypervisor.cpu import baseline, load_catalog, missing
from vmigrate.testbed.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs/result.schema.json").read_text())
QUICK = {"phases": {"warmup_s": 0, "baseline_s": 1, "after_s": 1}}  # as test_migration.py's
HETEROGENEOUS = {
    "vm": {"accel": "tcg", "cpu_model": "Skylake-Client-v4"},
    "hosts": {"source_cpu": "Skylake-Client-v4", "destination_cpu": "Westmere"},
}
MIB = 1024 * 1024
NEWER_THAN_WESTMERE = {"avx", "avx2", "bmi1", "bmi2", "fma", "movbe", "xsave"}


def run(testbed: Testbed, out: Path, **options: Any) -> dict[str, Any]:
    sections = {k: v for k, v in options.items() if k not in ("skip_preflight", "unsafe")}
    scenario = validate_scenario({**QUICK, **HETEROGENEOUS, **sections})
    result = run_experiment(
        scenario,
        out,
        testbed,
        SilentObserver(),
        skip_preflight=options.get("skip_preflight", False),
        unsafe=options.get("unsafe", False),
    ).model_dump(mode="json")
    jsonschema.validate(result, SCHEMA)
    return result


def checks_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["preflight"]["checks"]}


def test_qemu_knows_what_westmere_lacks_and_the_baseline_of_both() -> None:
    catalog = load_catalog("tcg")
    skylake = catalog.offered("Skylake-Client-v4", "source")
    westmere = catalog.offered("Westmere", "destination")
    lacking = set(missing(catalog.requested("Skylake-Client-v4"), westmere))
    assert lacking >= NEWER_THAN_WESTMERE
    assert missing(catalog.requested("Skylake-Client-v4"), skylake) == []
    assert baseline(catalog, [skylake, westmere]).cpu_model == "Westmere-v1"


def test_preflight_fails_listing_the_missing_features(testbed: Testbed, tmp_path: Path) -> None:
    scenario = validate_scenario({**QUICK, **HETEROGENEOUS})
    report = run_preflight(scenario, tmp_path, testbed, SilentObserver(), unsafe=False)
    checks = {c.name: c for c in report.checks}
    assert [c.name for c in report.failures] == ["cpu"]
    assert "host CPU does not provide required features" in checks["cpu"].message
    assert set(checks["cpu"].figures["missing"]["destination"]) >= NEWER_THAN_WESTMERE
    assert "Westmere-v1" in checks["cpu"].fix
    for name in ("disk_cache", "qemu_versions", "machine_type", "storage", "memory", "ports"):
        assert checks[name].status == "pass", checks[name]
    # The estimate came from the booted guest and the measured link (1000 Mbit/s here).
    estimate = checks["estimate"].figures
    assert 800 < estimate["link_mbit_s"] < 1100
    assert estimate["converges"] is True
    assert estimate["predicted_total_time_s"] > 0
    # The first pass sends what the booted guest touched and holds data: some, but far from
    # all of its RAM; some of what it touched holds zeros.
    assert 16 * MIB < estimate["touched_memory_bytes"] < estimate["guest_ram_bytes"]
    assert 8 * MIB < estimate["data_memory_bytes"] < estimate["touched_memory_bytes"]
    assert estimate["memory_bytes"] == estimate["data_memory_bytes"]


def test_forced_onto_an_older_host_the_vm_stays_on_the_source(
    testbed: Testbed, tmp_path: Path
) -> None:
    result = run(testbed, tmp_path, skip_preflight=True)
    assert result["outcome"] == "failed"
    assert "host doesn't support requested features" in result["error"]
    assert "avx2" in result["error"]
    assert result["preflight"]["skipped"] is True
    assert result["preflight"]["checks"] == []
    ver = result["verification"]
    assert ver["running_on"] == "source"
    assert ver["service_ok_after"] is True and ver["memory_checksum_ok"] is True
    assert result["service"]["requests"]["ok"] > 0
    assert (
        "refused to start -cpu Skylake-Client-v4" in (tmp_path / "qemu-destination.log").read_text()
    )


def test_a_failing_preflight_stops_the_run_before_the_guest_boots(
    testbed: Testbed, tmp_path: Path
) -> None:
    result = run(testbed, tmp_path)
    assert result["outcome"] == "failed"
    assert result["error"].startswith("pre-flight failed: cpu: host CPU does not provide")
    assert result["preflight"]["passed"] is False
    assert not (tmp_path / "qemu-source.log").exists()


def test_the_baseline_model_migrates_between_the_generations(
    testbed: Testbed, tmp_path: Path
) -> None:
    result = run(testbed, tmp_path, vm={**HETEROGENEOUS["vm"], "cpu_model": "baseline"})
    assert result["outcome"] == "completed", result["error"]
    pre = result["preflight"]
    assert (pre["cpu_model_requested"], pre["cpu_model"]) == ("baseline", "Westmere-v1")
    assert pre["passed"] is True and pre["machine"].startswith("pc-q35-")
    assert "chose Westmere-v1" in checks_of(result)["cpu_baseline"]["message"]
    assert checks_of(result)["cpu"]["status"] == "pass"
    assert result["verification"]["running_on"] == "destination"
    for role in ("source", "destination"):
        log = (tmp_path / f"qemu-{role}.log").read_text()
        assert "-cpu Westmere-v1 " in log and f"-machine {pre['machine']} " in log


def test_a_writeback_shared_disk_is_unsafe_unless_told(testbed: Testbed, tmp_path: Path) -> None:
    safe_cpu = {"vm": {"accel": "tcg", "disk_cache": "writeback"}, "hosts": {}}
    refused = run(testbed, tmp_path / "refused", **safe_cpu)
    assert refused["outcome"] == "failed"
    assert "migration is unsafe" in refused["error"]
    assert checks_of(refused)["disk_cache"]["status"] == "fail"
    allowed = run(testbed, tmp_path / "allowed", unsafe=True, **safe_cpu)
    assert allowed["outcome"] == "completed", allowed["error"]
    assert allowed["preflight"]["unsafe_allowed"] is True
    assert checks_of(allowed)["disk_cache"]["status"] == "warn"
    assert "cache=writeback" in (tmp_path / "allowed" / "qemu-source.log").read_text()


def test_preflight_command_exits_1_and_says_what_to_do() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vmigrate", "preflight", str(ROOT / "examples/heterogeneous.toml"),
         "--testbed", "vmigf", "--set", "vm.accel=tcg"],
        capture_output=True, text=True, timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "host CPU does not provide required features" in done.stdout
    assert "avx2" in done.stdout and 'vm.cpu_model = "baseline"' in done.stdout
    assert "1 failed" in done.stdout
    assert leftovers("vmigf") == []
