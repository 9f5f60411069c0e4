"""The command line: bad input is one line on stderr, exit code 2, and nothing is created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def vmigrate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmigrate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.parametrize(
    ("toml", "args", "needle"),
    [
        ("[vm]\nmemroy_mib = 512\n", [], "vm.memroy_mib: unknown key 'memroy_mib'; allowed keys"),
        ("[vm]\nmemory_mib = -5\n", [], "vm.memory_mib: must be greater than 0 (got -5)"),
        (
            '[migration]\nstrategy = "prcopy"\n',
            [],
            "choose one of: precopy, postcopy, hybrid, auto-converge, xbzrle, multifd, cold",
        ),
        (
            "",
            ["--set", "migration.strategy=postcopyy"],
            "choose one of: precopy, postcopy, hybrid, auto-converge, xbzrle, multifd, cold",
        ),
        ("", ["--set", "vm.memory_mib"], "expected section.key=value"),
        ("", ["--set", "vm.cpu_model=Skylake"], "vm.cpu_model = 'Skylake' is not a CPU model"),
        ("", ["--set", "vm.cpu_model=Westmere,avz=on"], "'avz' is not a CPU feature QEMU knows"),
        ("", ["--set", "hosts.destination_cpu=Westmer"], "(close: Westmere, Westmere-IBRS"),
        ("", ["--set", "vm.machine=q36"], "vm.machine = 'q36' is not a machine type"),
        ("", ["--set", "vm.disk_cache=back"], "choose one of: none, directsync, writethrough"),
        ("[testbed]\nhypervisors = 7\n", [], "testbed.hypervisors: 7 is out of range; use 2 to 6"),
    ],
)
def test_bad_scenario_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, toml: str, args: list[str], needle: str
) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(toml)
    before = namespaces()
    done = vmigrate("run", str(scenario), "--testbed", "vmigbad", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert needle in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]
    assert namespaces() == before


def test_bad_testbed_name_is_refused(tmp_path: Path) -> None:
    done = vmigrate("testbed", "status", "--testbed", "Bad_Name!", cwd=tmp_path)
    assert done.returncode == 2
    assert "testbed name 'Bad_Name!' is invalid" in done.stderr


@pytest.mark.parametrize("count", ["1", "7"])
def test_testbed_up_with_a_hypervisor_count_out_of_range_is_refused(
    tmp_path: Path, count: str
) -> None:
    before = namespaces()
    argv = ["testbed", "up", "-t", "vmigbad", "--hypervisors", count]
    done = subprocess.run(
        [sys.executable, "-m", "vmigrate", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "VMIGRATE_STATE": str(tmp_path / "state")},
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"vmigrate: error: a testbed has 2 to 6 hypervisor hosts, not {count}: use a number in "
        "that range"
    )
    assert namespaces() == before and not (tmp_path / "state").exists()


def test_help_teaches() -> None:
    done = vmigrate("run", "--help", cwd=Path.cwd())
    assert done.returncode == 0
    assert "--set" in done.stdout and "result.json" in done.stdout


def test_report_redoes_the_analysis_of_a_recorded_run(tmp_path: Path) -> None:
    from synthetic_run import make_synthetic_run

    run_dir = make_synthetic_run(tmp_path / "run")
    result_path = run_dir / "result.json"
    recorded = json.loads(result_path.read_text())
    del recorded["service"]  # the analysis must bring it back from the series
    result_path.write_text(json.dumps(recorded))
    (run_dir / "report.html").unlink(missing_ok=True)
    done = vmigrate("report", str(run_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "downtime (client probe)" in done.stdout
    assert json.loads(result_path.read_text())["service"]["observed_downtime_ms"] > 0
    assert (run_dir / "report.html").stat().st_size > 100_000


def test_report_of_a_directory_that_is_no_run_says_so(tmp_path: Path) -> None:
    done = vmigrate("report", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "has no result.json" in done.stderr
