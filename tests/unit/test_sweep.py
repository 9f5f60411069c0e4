"""Sweeps without a VM: a fake runner returns synthetic results (some fail, some raise).

Covers the SWEEP.toml format and its one-line errors, the cartesian product and the ids, the
SQLite rows and their flattened columns, resuming, the statistics against hand-computed
values, the comparison page (self-contained, incomplete cells in red) and the CLI wiring.
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from test_result import completed_document
from typer.testing import CliRunner

import vmigrate.sweep.runner as runner_module
from vmigrate.cli import app
from vmigrate.config import Scenario, scenario_to_dict
from vmigrate.errors import EnvironmentProblem, ScenarioError, VmigrateError
from vmigrate.report.comparison import render_comparison
from vmigrate.result import Result
from vmigrate.stats import describe, t_quantile_975
from vmigrate.sweep.database import RunRecord, result_figures
from vmigrate.sweep.execute import ERROR_OUTCOME, execute_sweep, run_sweep
from vmigrate.sweep.plan import PlannedRun, Sweep, load_sweep, run_dir_name
from vmigrate.sweep.progress import RichSweepProgress
from vmigrate.sweep.summary import summary_table

MIB = 1024 * 1024
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

QUICK = """
name = "unit"
repetitions = 2

[base]
phases = { warmup_s = 0, baseline_s = 1, after_s = 1 }

[matrix]
"migration.strategy" = ["precopy", "cold"]
"network.bandwidth_mbit" = [100, 1000]
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def fake_result(scenario: Scenario, total_s: float, outcome: str = "completed") -> Result:
    """A whole result document, with the figures the sweep reads set from `total_s`."""
    done = outcome == "completed"
    document = completed_document()
    document.update(
        scenario=scenario_to_dict(scenario),
        outcome=outcome,
        error=None if done else f"not finished after {scenario.migration.timeout_s:g} s",
        timeline_s={"migration_start": 11.0},
    )
    document["migration"].update(
        strategy=scenario.migration.strategy,
        total_time_s=total_s if done else None,
        downtime_reported_ms=10 * total_s if done else None,
        transferred_bytes=int(100 * MIB * total_s),
        iterations=3,
        actions=[{"t_s": 1.0, "action": "x"}],
    )
    service = document["service"]
    service["observed_downtime_ms"] = 12 * total_s if done else None
    service["latency_ms"]["during"] = {
        "count": 100, "p50": 1.0, "p90": 2.0, "p99": 3 * total_s, "p999": 3 * total_s,
        "max": 3 * total_s, "mean": 1.5,
    }  # fmt: skip
    service["histograms"]["during"] = "HISTFAAA"
    for host, share in (("source", 1.0), ("destination", 0.5), ("storage", 0.1)):
        figures = document["resources"]["hosts"][host]
        figures["cpu_seconds"].update(extra=share * total_s, during=2.0)
        figures["migration_cpu_seconds"].update(extra=share * total_s, during=2.0)
    document["verification"]["memory_writes_intact"] = done
    document["checks"] = [{"name": "service_reachable", "ok": done, "detail": "", "figures": {}}]
    return Result.model_validate(document)


class FakeRunner:
    """Returns synthetic results: total time from `times` by strategy and call; `fail` maps a
    strategy to an outcome or to an exception to raise. Counts its calls."""

    def __init__(
        self,
        times: dict[str, list[float]] | None = None,
        fail: dict[str, str | Exception] | None = None,
    ) -> None:
        self.times = times or {}
        self.fail = fail or {}
        self.calls: list[tuple[str, Path]] = []

    def __call__(self, scenario: Scenario, out_dir: Path) -> Result:
        strategy = scenario.migration.strategy
        seen = sum(1 for s, _ in self.calls if s == strategy)
        self.calls.append((strategy, out_dir))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "marker").write_text("ran")
        failure = self.fail.get(strategy)
        if isinstance(failure, Exception):
            raise failure
        series = self.times.get(strategy, [1.0])
        total = series[seen % len(series)]
        return fake_result(scenario, total, failure or "completed")


def rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY repetition, run_id")]
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# the sweep file


def test_cells_are_the_cartesian_product_with_stable_ids(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, QUICK))
    assert sweep.name == "unit" and sweep.repetitions == 2
    assert [c.cell_id for c in sweep.cells] == [
        "migration.strategy=precopy,network.bandwidth_mbit=100",
        "migration.strategy=precopy,network.bandwidth_mbit=1000",
        "migration.strategy=cold,network.bandwidth_mbit=100",
        "migration.strategy=cold,network.bandwidth_mbit=1000",
    ]
    assert sweep.cells[0].label == "strategy=precopy · bandwidth_mbit=100"
    cold_fast = sweep.cells[3].scenario
    assert cold_fast.migration.strategy == "cold"
    assert cold_fast.network.bandwidth_mbit == 1000
    assert cold_fast.phases.baseline_s == 1  # from the base
    assert cold_fast.name == "unit"  # the sweep's name when the base has none
    runs = sweep.runs()
    assert len(runs) == 8
    # repetition-major: every cell once, then every cell again
    assert [r.repetition for r in runs] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert runs[5].run_id == "migration.strategy=precopy,network.bandwidth_mbit=1000,rep=2"
    # the id does not depend on the order the matrix keys are written in
    swapped = QUICK.replace(
        '"migration.strategy" = ["precopy", "cold"]\n"network.bandwidth_mbit" = [100, 1000]',
        '"network.bandwidth_mbit" = [100, 1000]\n"migration.strategy" = ["precopy", "cold"]',
    )
    again = load_sweep(write(tmp_path, swapped, "swapped.toml"))
    assert {c.cell_id for c in again.cells} == {c.cell_id for c in sweep.cells}


def test_a_section_takes_tables_of_keys_that_go_together(tmp_path: Path) -> None:
    sweep = load_sweep(
        write(
            tmp_path,
            """
            [matrix]
            migration = [
                { strategy = "precopy" },
                { strategy = "multifd", multifd_compression = "zstd", multifd_channels = 4 },
            ]
            """,
        )
    )
    ids = [c.cell_id for c in sweep.cells]
    assert ids == [
        "migration.strategy=precopy",
        "migration.multifd_channels=4,migration.multifd_compression=zstd,migration.strategy=multifd",
    ]
    assert [c.label for c in sweep.cells] == [
        "precopy",
        "multifd (multifd_compression=zstd, multifd_channels=4)",
    ]
    multifd = sweep.cells[1].scenario.migration
    assert (multifd.multifd_compression, multifd.multifd_channels) == ("zstd", 4)
    assert sweep.cells[0].scenario.migration.multifd_compression == "none"
    assert sweep.name == "sweep"  # from the file name


def test_a_table_may_set_another_sections_key_with_its_dotted_name(tmp_path: Path) -> None:
    text = """
        [matrix]
        migration = [{ strategy = "precopy" }, { strategy = "postcopy", "storage.mode" = "local" }]
        """
    sweep = load_sweep(write(tmp_path, text))
    assert [c.scenario.storage.mode for c in sweep.cells] == ["shared-nfs", "local"]
    assert sweep.cells[1].cell_id == "migration.strategy=postcopy,storage.mode=local"
    bad = text.replace('"storage.mode"', '"storage.mood"')
    with pytest.raises(ScenarioError, match="unknown key 'mood'"):
        load_sweep(write(tmp_path, bad, "bad.toml"))


def test_dotted_keys_written_bare_mean_the_same(tmp_path: Path) -> None:
    quoted = load_sweep(write(tmp_path, '[matrix]\n"vm.vcpus" = [1, 2]\n', "a.toml"))
    bare = load_sweep(write(tmp_path, "[matrix]\nvm.vcpus = [1, 2]\n", "b.toml"))
    assert [c.cell_id for c in quoted.cells] == [c.cell_id for c in bare.cells]
    assert [c.label for c in bare.cells] == ["1", "2"]


def test_no_matrix_is_one_cell_repeated(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, "repetitions = 3\n[base.vm]\nmemory_mib = 256\n"))
    assert [c.cell_id for c in sweep.cells] == ["base"]
    assert [r.run_id for r in sweep.runs()] == ["base,rep=1", "base,rep=2", "base,rep=3"]
    assert sweep.cells[0].scenario.vm.memory_mib == 256


def test_the_base_can_be_a_scenario_file_next_to_the_sweep(tmp_path: Path) -> None:
    (tmp_path / "scenarios").mkdir()
    write(tmp_path / "scenarios", '[workload]\nkind = "memory"\nworking_set_mib = 32\n', "m.toml")
    path = write(tmp_path, 'base = "scenarios/m.toml"\n[matrix]\n"vm.vcpus" = [1, 2]\n')
    sweep = load_sweep(path, ["phases.after_s=2", "vm.vcpus=4"])
    assert all(c.scenario.workload.working_set_mib == 32 for c in sweep.cells)
    assert all(c.scenario.phases.after_s == 2 for c in sweep.cells)  # --set changes the base
    assert [c.scenario.vm.vcpus for c in sweep.cells] == [1, 2]  # ... and the matrix wins


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("repetition = 3\n", "repetition: unknown key 'repetition'; allowed keys in a sweep: "),
        ("repetitions = 0\n", "repetitions: must be greater than or equal to 1 (got 0)"),
        ('name = "a b"\n', "name: String should match pattern"),
        ("base = 5\n", "base: must be a [base] table (a scenario) or the path of a scenario"),
        ('base = "nope.toml"\n', "nope.toml: no such base scenario file"),
        ("[base.vm]\nmemory_mib = -1\n", "cell base: vm.memory_mib: must be greater than 0"),
        ("[base.vm]\nmemroy_mib = 1\n", "cell base: vm.memroy_mib: unknown key 'memroy_mib'"),
        ('[matrix]\n"vmm.vcpus" = [1]\n', "matrix key 'vmm.vcpus': unknown section 'vmm'"),
        (
            '[matrix]\n"vm.vcpu" = [1]\n',
            "matrix key 'vm.vcpu': unknown key 'vcpu'; allowed keys in [vm]: memory_mib, vcpus",
        ),
        ('[matrix]\n"memory" = [1]\n', "matrix key 'memory' is not a scenario key"),
        ('[matrix]\n"vm.vcpus" = 2\n', "matrix key 'vm.vcpus': expected a list of values"),
        ('[matrix]\n"vm.vcpus" = []\n', "matrix key 'vm.vcpus': the list is empty"),
        ('[matrix]\n"vm.vcpus" = [1, 1]\n', "matrix key 'vm.vcpus': value 'vm.vcpus=1' is listed"),
        ('[matrix]\n"vm.vcpus" = [{a = 1}]\n', "is not a plain value; for several keys together"),
        ("[matrix]\nvm = [2]\n", "matrix key 'vm': a section takes tables of its keys"),
        ("[matrix]\nvm = [{ cpus = 2 }]\n", "matrix key 'vm.cpus': unknown key 'cpus'"),
        (
            '[matrix]\n"migration.strategy" = ["precopy", "teleport"]\n',
            "cell migration.strategy=teleport: migration.strategy: 'teleport' is not allowed; "
            "choose one of: precopy, postcopy",
        ),
        (
            '[matrix]\n"vm.memory_mib" = [512, 0]\n',
            "cell vm.memory_mib=0: vm.memory_mib: must be greater than 0",
        ),
        (
            '[matrix]\n"migration.strategy" = ["multifd", "precopy"]\n'
            '"migration.multifd_compression" = ["zstd"]\n',
            "cell migration.multifd_compression=zstd,migration.strategy=precopy: "
            "migration.multifd_compression tunes strategy multifd, not precopy",
        ),
        (
            '[matrix]\n"migration.strategy" = ["cold"]\nmigration = [{ timeout_s = 5 }]\n'
            'network = [{ bandwidth_mbit = 1 }, { bandwidth_mbit = 2, strategy = "x" }]\n',
            "matrix key 'network.strategy': unknown key 'strategy'",
        ),
        (
            '[matrix]\n"migration.strategy" = ["cold"]\nmigration = [{ strategy = "precopy" }]\n',
            "matrix: migration.strategy is set by both 'migration.strategy' and 'migration'",
        ),
        ("[matrix\n", "not valid TOML"),
    ],
)
def test_a_bad_sweep_is_one_line_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_sweep(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path.parent)), message
    assert needle in message, message
    assert caught.value.exit_code == 2


def test_a_missing_sweep_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"nope\.toml: no such sweep file"):
        load_sweep(tmp_path / "nope.toml")


def test_a_bad_cell_refuses_the_whole_sweep_before_any_run(tmp_path: Path) -> None:
    path = write(tmp_path, '[matrix]\n"vm.vcpus" = [1, 2, 99]\n')
    runner = FakeRunner()
    out = tmp_path / "out"
    with pytest.raises(ScenarioError, match=r"cell vm\.vcpus=99: vm\.vcpus: must be less"):
        run_sweep(path, out, runner)
    assert runner.calls == []
    assert not out.exists()


def test_run_directory_names_are_safe() -> None:
    assert run_dir_name("vm.cpu_model=a/b,rep=1") == "vm.cpu_model=a%2Fb,rep=1"
    assert run_dir_name("..") == "run-.."
    long = run_dir_name("x=" + "y" * 400)
    assert len(long.encode()) <= 200 and long != run_dir_name("x=" + "y" * 399)


# ---------------------------------------------------------------------------------------------
# running, recording, resuming


def test_every_run_becomes_a_row_with_scenario_and_figure_columns(tmp_path: Path) -> None:
    runner = FakeRunner(times={"precopy": [1.0, 2.0], "cold": [3.0]})
    out = tmp_path / "out"
    summary = run_sweep(write(tmp_path, QUICK), out, runner)
    assert (summary.ran, summary.skipped, summary.crashed) == (8, 0, 0)
    table = rows(out / "sweep.db")
    assert len(table) == 8
    by_id = {row["run_id"]: row for row in table}
    first = by_id["migration.strategy=precopy,network.bandwidth_mbit=100,rep=1"]
    assert first["cell_id"] == "migration.strategy=precopy,network.bandwidth_mbit=100"
    assert first["repetition"] == 1
    assert first["outcome"] == "completed" and first["error"] is None
    assert first["run_dir"] == "runs/" + first["run_id"]
    assert first["started_at"].startswith("20")
    assert first["scenario.migration.strategy"] == "precopy"
    assert first["scenario.network.bandwidth_mbit"] == 100
    assert first["scenario.vm.memory_mib"] == 512
    assert first["scenario.phases.baseline_s"] == 1
    assert first["migration.total_time_s"] == 1.0
    assert first["migration.transferred_bytes"] == 100 * MIB
    assert first["service.observed_downtime_ms"] == 12.0
    assert first["service.latency_ms.during.p99"] == 3.0
    assert first["resources.hosts.source.cpu_seconds.extra"] == 1.0
    assert first["resources.hosts.destination.cpu_seconds.extra"] == 0.5
    assert first["verification.memory_writes_intact"] == 1
    assert first["checks.service_reachable.ok"] == 1
    assert json.loads(first["result_json"])["outcome"] == "completed"
    assert json.loads(first["scenario_json"])["migration"]["strategy"] == "precopy"
    # not figures: the clock, the scenario (it has its own columns), text, lists
    for absent in ("clock.t0_ns", "schema_version", "migration.actions", "events", "error"):
        assert absent not in first or absent == "error"
    assert "service.histograms.during" not in first
    assert "scenario.name" in first
    # every run ran in its own directory under runs/
    dirs = {path for _, path in runner.calls}
    assert len(dirs) == 8 and all(p.parent == out / "runs" for p in dirs)
    assert all((p / "marker").exists() for p in dirs)


def test_result_figures_flatten_numbers_and_booleans_only() -> None:
    result = fake_result(Scenario(), 2.0)
    figures = result_figures(result.model_dump(mode="json"))
    assert figures["migration.total_time_s"] == 2.0
    assert figures["migration.iterations"] == 3
    assert figures["timeline_s.migration_start"] == 11.0
    assert figures["verification.memory_writes_intact"] == 1
    assert "verification.running_on" not in figures  # text
    assert not any(k.startswith(("scenario.", "environment.", "clock.")) for k in figures)
    assert all(isinstance(v, int | float) for v in figures.values())


def test_failed_and_crashed_runs_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    runner = FakeRunner(fail={"cold": RuntimeError("QEMU exploded\nbadly"), "precopy": "timeout"})
    out = tmp_path / "out"
    summary = run_sweep(write(tmp_path, QUICK), out, runner)
    assert len(runner.calls) == 8
    table = rows(out / "sweep.db")
    by_outcome: dict[str, list[dict[str, Any]]] = {}
    for row in table:
        by_outcome.setdefault(row["outcome"], []).append(row)
    assert sorted(by_outcome) == [ERROR_OUTCOME, "timeout"]
    crashed = by_outcome[ERROR_OUTCOME][0]
    assert crashed["error"] == "RuntimeError: QEMU exploded badly"
    assert crashed["result_json"] is None
    assert crashed["scenario.migration.strategy"] == "cold"
    timed_out = by_outcome["timeout"][0]
    assert timed_out["error"] == "not finished after 120 s"
    assert timed_out.get("migration.total_time_s") is None  # no run had one: no column
    assert timed_out["migration.transferred_bytes"] == 100 * MIB
    assert summary.crashed == 4


def test_resume_skips_finished_runs_and_retries_crashed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, QUICK)
    out = tmp_path / "out"
    first = FakeRunner(fail={"cold": RuntimeError("boom"), "precopy": "failed"})
    run_sweep(path, out, first)
    assert len(first.calls) == 8
    second = FakeRunner()
    summary = run_sweep(path, out, second)
    # the failed precopy runs have a result: kept; the crashed cold runs are run again
    assert sorted({s for s, _ in second.calls}) == ["cold"]
    assert (summary.ran, summary.skipped, summary.crashed) == (4, 4, 0)
    outcomes = {r["run_id"]: r["outcome"] for r in rows(out / "sweep.db")}
    assert len(outcomes) == 8
    assert sorted(set(outcomes.values())) == ["completed", "failed"]
    third = FakeRunner()
    summary = run_sweep(path, out, third)
    assert third.calls == []
    assert (summary.ran, summary.skipped) == (0, 8)


def test_more_repetitions_run_only_the_new_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_sweep(write(tmp_path, QUICK), out, FakeRunner())
    runner = FakeRunner()
    run_sweep(write(tmp_path, QUICK.replace("repetitions = 2", "repetitions = 3")), out, runner)
    assert len(runner.calls) == 4
    assert all(p.name.endswith(",rep=3") for _, p in runner.calls)
    assert len(rows(out / "sweep.db")) == 12


def test_resume_refuses_a_directory_made_with_another_scenario(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_sweep(write(tmp_path, QUICK), out, FakeRunner())
    runner = FakeRunner()
    with pytest.raises(ScenarioError) as caught:
        run_sweep(write(tmp_path, QUICK), out, runner, overrides=["phases.after_s=3"])
    assert "made with another scenario (phases.after_s: 1.0 -> 3.0)" in str(caught.value)
    assert "another --out directory" in str(caught.value)
    assert runner.calls == []


def test_leftovers_of_an_interrupted_run_are_replaced(tmp_path: Path) -> None:
    path = write(tmp_path, "[matrix]\n'vm.vcpus' = [1]\n")
    out = tmp_path / "out"
    stale = out / "runs" / "vm.vcpus=1,rep=1"
    stale.mkdir(parents=True)
    (stale / "result.json.tmp").write_text("half")
    run_sweep(path, out, FakeRunner())
    assert sorted(p.name for p in stale.iterdir()) == ["marker"]


def test_a_usage_error_stops_the_sweep(tmp_path: Path) -> None:
    runner = FakeRunner(fail={"precopy": EnvironmentProblem("vmigrate needs root")})
    with pytest.raises(EnvironmentProblem):
        run_sweep(write(tmp_path, QUICK), tmp_path / "out", runner)
    assert len(runner.calls) == 1


def test_interrupting_a_sweep_keeps_what_was_recorded(tmp_path: Path) -> None:
    path = write(tmp_path, QUICK)
    out = tmp_path / "out"

    class Interrupting(FakeRunner):
        def __call__(self, scenario: Scenario, out_dir: Path) -> Result:
            if len(self.calls) == 3:
                raise KeyboardInterrupt
            return super().__call__(scenario, out_dir)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, out, Interrupting())
    assert len(rows(out / "sweep.db")) == 3
    resumed = FakeRunner()
    run_sweep(path, out, resumed)
    assert len(resumed.calls) == 5


# ---------------------------------------------------------------------------------------------
# statistics


def test_statistics_of_1_2_3_4_by_hand() -> None:
    stats = describe([1, 2, 3, 4])
    assert stats.n == 4
    assert stats.mean == 2.5
    assert stats.median == 2.5
    assert stats.stdev == pytest.approx(math.sqrt(5 / 3))  # 1.290994
    # t(0.975, 3) = 3.182446; sem = 1.290994 / 2 = 0.645497; half-width 2.054260
    assert stats.ci95_half == pytest.approx(2.054260, abs=1e-6)
    assert stats.ci95_low == pytest.approx(0.445740, abs=1e-6)
    assert stats.ci95_high == pytest.approx(4.554260, abs=1e-6)


def test_statistics_ignore_missing_values_and_say_what_is_undefined() -> None:
    stats = describe([None, 5.0, float("nan"), None, 7.0, 6.0])
    assert (stats.n, stats.mean, stats.median) == (3, 6.0, 6.0)
    assert stats.stdev == pytest.approx(1.0)
    assert stats.ci95_half == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    one = describe([None, 4.0])
    assert (one.n, one.mean, one.median, one.stdev, one.ci95_low, one.ci95_half) == (
        1, 4.0, 4.0, None, None, None,
    )  # fmt: skip
    assert describe([]).as_dict() == {
        "n": 0, "mean": None, "median": None, "stdev": None,
        "ci95_low": None, "ci95_high": None, "ci95_half": None,
    }  # fmt: skip
    even = describe([1, 10, 2, 9])
    assert even.median == 5.5


@pytest.mark.parametrize(
    ("df", "expected"),
    [
        (1, 12.706205),
        (2, 4.302653),
        (5, 2.570582),
        (10, 2.228139),
        (30, 2.042272),
        (31, 2.039513),
        (40, 2.021075),
        (60, 2.000298),
        (100, 1.983972),
        (1000, 1.962339),
        (10**9, 1.959964),
    ],
)
def test_t_quantiles_match_published_values(df: int, expected: float) -> None:
    assert t_quantile_975(df) == pytest.approx(expected, abs=2e-6)


def test_t_quantile_needs_a_degree_of_freedom() -> None:
    with pytest.raises(ValueError):
        t_quantile_975(0)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=40))
def test_the_interval_is_centred_on_the_mean_and_order_free(values: list[float]) -> None:
    stats = describe(values)
    again = describe(list(reversed(values)))
    assert stats.mean is not None and stats.ci95_low is not None and stats.ci95_high is not None
    assert stats.ci95_low <= stats.mean <= stats.ci95_high
    assert stats.mean - stats.ci95_low == pytest.approx(stats.ci95_high - stats.mean, abs=1e-6)
    assert again.mean == pytest.approx(stats.mean, abs=1e-6)
    assert again.median == stats.median
    assert min(values) <= (stats.median or 0.0) <= max(values)


def test_the_summary_counts_outcomes_and_averages_completed_runs_only(tmp_path: Path) -> None:
    text = "repetitions = 4\n[matrix]\n'migration.strategy' = ['precopy', 'cold', 'postcopy']\n"
    runner = FakeRunner(
        times={"precopy": [1.0, 2.0, 3.0, 4.0], "postcopy": [5.0]},
        fail={"cold": "timeout"},
    )
    out = tmp_path / "out"
    summary = run_sweep(write(tmp_path, text), out, runner)
    document = json.loads((out / "summary.json").read_text())
    assert document == summary.document
    assert document["repetitions"] == 4
    assert document["axes"] == ["migration.strategy"]
    precopy, cold, postcopy = document["cells"]
    assert precopy["label"] == "precopy" and precopy["settings"] == {
        "migration.strategy": "precopy"
    }
    assert (precopy["runs"], precopy["completed"], precopy["outcomes"]) == (
        4, 4, {"completed": 4},
    )  # fmt: skip
    total = precopy["figures"]["migration.total_time_s"]
    assert total["n"] == 4 and total["mean"] == 2.5 and total["median"] == 2.5
    assert total["ci95_low"] == pytest.approx(0.445740, abs=1e-6)
    reported = precopy["figures"]["migration.downtime_reported_ms"]
    assert reported["mean"] == pytest.approx(25.0)
    assert precopy["figures"]["resources.hosts.storage.migration_cpu_seconds.extra"]["mean"] == (
        pytest.approx(0.25)
    )
    assert postcopy["figures"]["migration.total_time_s"]["stdev"] == 0.0
    # the timed-out cell: counted, but none of its figures averaged in
    assert (cold["runs"], cold["completed"], cold["outcomes"]) == (4, 0, {"timeout": 4})
    assert cold["figures"]["migration.transferred_bytes"]["n"] == 0
    assert [r["outcome"] for r in cold["run_list"]] == ["timeout"] * 4
    assert cold["run_list"][0]["figures"]["migration.transferred_bytes"] == 100 * MIB


# ---------------------------------------------------------------------------------------------
# the comparison page


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def test_the_comparison_is_self_contained_and_flags_incomplete_cells(tmp_path: Path) -> None:
    text = (
        "name = 'cmp'\nrepetitions = 3\n[matrix]\n"
        "migration = [{strategy = 'precopy'}, {strategy = 'postcopy'}, {strategy = 'cold'}]\n"
    )

    class Mixed(FakeRunner):
        def __call__(self, scenario: Scenario, out_dir: Path) -> Result:
            result = super().__call__(scenario, out_dir)
            strategy = scenario.migration.strategy
            if strategy == "postcopy" and sum(s == strategy for s, _ in self.calls) == 2:
                raise RuntimeError("the guest did not boot")
            return result

    out = tmp_path / "out"
    summary = run_sweep(
        write(tmp_path, text), out, Mixed(times={"precopy": [1, 2, 3]}, fail={"cold": "timeout"})
    )
    path = summary.comparison_path
    assert path == out / "comparison.html"
    page = _Page()
    source = path.read_text(encoding="utf-8")
    page.feed(source)
    for tag, attrs in page.elements:
        for name in ("src", "href", "data", "action"):
            value = attrs.get(name, "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (tag, attrs)
        if tag == "script":
            assert "src" not in attrs
        if tag == "link":
            assert attrs.get("rel") != "stylesheet"
    assert source.count("* plotly.js v") == 1  # inlined once
    assert source.count("Plotly.newPlot(") == 5
    ids = {attrs["id"] for _, attrs in page.elements if "id" in attrs}
    for section in ("header", "statistics", "runs", "total-time", "downtime", "latency", "cpu"):
        assert section in ids, section
    assert "incomplete-banner" in ids
    words = " ".join(page.text)
    for needle in ("sweep cmp", "precopy", "postcopy", "cold", "3 timeout", "1 error",
                   "2.000 s", "the guest did not boot"):  # fmt: skip
        assert needle in words, needle
    # completed counts: red where not every run completed
    counts = [
        (attrs.get("class"), text)
        for (tag, attrs), text in zip(page.elements, page.text, strict=False)
        if tag == "span"
    ]
    assert counts  # sanity
    assert '<span class="bad">2 / 3</span>' in source  # postcopy: one crashed
    assert '<span class="bad">0 / 3</span>' in source  # cold: all timed out
    assert '<span class="yes">3 / 3</span>' in source
    # links to each run's own report, relative and escaped
    assert 'href="runs/migration.strategy%3Dprecopy%2Crep%3D1/report.html"' in source
    # same input, same bytes
    before = path.read_bytes()
    render_comparison(out)
    assert path.read_bytes() == before


def test_the_comparison_needs_a_summary(tmp_path: Path) -> None:
    with pytest.raises(VmigrateError, match="no summary.json"):
        render_comparison(tmp_path)


# ---------------------------------------------------------------------------------------------
# progress and terminal


class Recording:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def start(self, sweep: Sweep, todo: int, skipped: int) -> None:
        self.events.append(("start", todo, skipped))

    def run_started(self, run: PlannedRun, index: int, todo: int) -> None:
        self.events.append(("run", run.run_id, index, todo))

    def run_finished(self, rec: RunRecord, index: int, todo: int) -> None:
        self.events.append(("done", rec.run.run_id, rec.outcome))

    def finish(self) -> None:
        self.events.append(("finish",))


def test_progress_hears_of_every_run(tmp_path: Path) -> None:
    path = write(tmp_path, QUICK)
    out = tmp_path / "out"
    run_sweep(path, out, FakeRunner(fail={"cold": RuntimeError("x")}))
    progress = Recording()
    run_sweep(path, out, FakeRunner(), progress)
    assert progress.events[0] == ("start", 4, 4)
    assert [e[0] for e in progress.events[1:]] == ["run", "done"] * 4 + ["finish"]
    assert progress.events[1][2:] == (0, 4)


def test_the_terminal_shows_a_bar_a_line_per_run_and_a_table(tmp_path: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=140, force_terminal=False, color_system=None)
    progress = RichSweepProgress(console)
    sweep = load_sweep(write(tmp_path, QUICK))

    def runner(scenario: Scenario, out_dir: Path) -> Result:
        progress.stage("booting the guest")
        return FakeRunner(fail={"cold": "timeout"})(scenario, out_dir)

    summary = execute_sweep(sweep, tmp_path / "out", runner, progress)
    console.print(summary_table(summary.document))
    text = buffer.getvalue()
    assert "sweep unit: 4 cells \u00d7 2 repetitions = 8 runs" in text
    assert "✓ [1/8] strategy=precopy · bandwidth_mbit=100 #1: completed · migration 1.00 s" in text
    assert "✗ [3/8] strategy=cold · bandwidth_mbit=100 #1: timeout" in text
    assert "not finished after 120 s" in text
    assert "8/8" in text
    assert "1.00 ± 0.00" in text  # precopy total time, in the table
    assert "0/2" in text and "2 timeout" in text


def test_the_eta_uses_the_mean_run_duration() -> None:
    from rich.progress import Progress

    from vmigrate.sweep.progress import _EtaColumn

    with Progress(console=Console(file=io.StringIO())) as bar:
        task = bar.add_task("x", total=5, mean_run_s=None, run_started=None)
        column = _EtaColumn()
        assert "-:--:--" in column.render(bar.tasks[task]).plain
        bar.update(task, completed=2, mean_run_s=60.0, run_started=None)
        assert column.render(bar.tasks[task]).plain == "ETA 0:03:00"


# ---------------------------------------------------------------------------------------------
# the command line


def test_cli_sweep_runs_resumes_and_prints_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[FakeRunner] = []

    class FakeExperimentRunner:
        def __init__(self, testbed: Any, observer: Any) -> None:
            self.fake = FakeRunner(fail={"cold": RuntimeError("boom")})
            made.append(self.fake)

        def __enter__(self) -> Callable[[Scenario, Path], dict[str, Any]]:
            return self.fake

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(runner_module, "ExperimentRunner", FakeExperimentRunner)
    path = write(tmp_path, QUICK)
    out = tmp_path / "out"
    cli = CliRunner()
    done = cli.invoke(app, ["sweep", str(path), "--out", str(out), "--testbed", "vmigs"])
    assert done.exit_code == 1, done.output  # the crashed cold runs
    assert "4 run(s) crashed" in done.output
    assert "comparison.html" in done.output
    assert len(made[0].calls) == 8
    done = cli.invoke(app, ["sweep", str(path), "--out", str(out), "--testbed", "vmigs"])
    assert done.exit_code == 1
    assert "4 already done (resuming); 4 to run" in done.output
    assert len(made[1].calls) == 4


def test_cli_sweep_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, '[matrix]\n"vm.vcpu" = [1, 2]\n')
    done = subprocess.run(
        [sys.executable, "-m", "vmigrate", "sweep", str(path), "--testbed", "vmigs"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "matrix key 'vm.vcpu': unknown key 'vcpu'" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]


@pytest.mark.parametrize("name", ["strategies.toml", "sweep-quick.toml", "backends.toml"])
def test_the_example_sweeps_are_valid(name: str) -> None:
    sweep = load_sweep(EXAMPLES / name)
    assert sweep.cells
    if name == "backends.toml":  # the two backends side by side, cell for cell
        backends = [c.scenario.hosts.backend for c in sweep.cells]
        assert backends == ["qemu"] * 3 + ["libvirt"] * 3
        strategies = [c.scenario.migration.strategy for c in sweep.cells]
        assert strategies[:3] == strategies[3:] == ["precopy", "postcopy", "auto-converge"]
        assert len(sweep.runs()) == 18
    if name == "strategies.toml":
        assert [c.scenario.migration.strategy for c in sweep.cells] == [
            "precopy", "postcopy", "hybrid", "auto-converge", "xbzrle", "multifd", "cold",
            "postcopy",
        ]  # fmt: skip
        assert sweep.cells[5].scenario.migration.multifd_compression == "zstd"
        assert [c.scenario.storage.mode for c in sweep.cells].count("local") == 1
        assert sweep.cells[7].scenario.storage.mode == "local"
        assert sweep.repetitions == 3
        base = sweep.cells[0].scenario
        assert base.network.bandwidth_mbit == 100 and base.migration.timeout_s == 120
        assert base.workload.dirty_rate_mib_s * 8 > base.network.bandwidth_mbit
    elif name == "sweep-quick.toml":
        assert len(sweep.runs()) == 4


class FakeTestbed:
    """Counts what the real runner asks of the testbed."""

    def __init__(self, healthy: bool, hypervisors: int = 2) -> None:
        self.healthy = healthy
        self.ups: list[float] = []
        self.asked: list[int] = []
        self.hypervisors = hypervisors
        self.downs = 0

    def is_healthy(self) -> bool:
        return self.healthy

    def up(
        self, bandwidth_mbit: float, progress: Callable[[str], None], hypervisors: int = 0
    ) -> None:
        self.ups.append(bandwidth_mbit)
        self.asked.append(hypervisors)
        self.hypervisors = hypervisors
        self.healthy = True

    def down(self) -> list[str]:
        self.downs += 1
        self.healthy = False
        return []


@pytest.mark.parametrize("healthy", [False, True])
def test_the_real_runner_brings_the_testbed_up_once_and_down_if_it_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, healthy: bool
) -> None:
    import vmigrate.experiment

    seen: list[tuple[float, Path]] = []

    def fake_experiment(scenario: Scenario, out_dir: Path, testbed: Any, observer: Any) -> Result:
        seen.append((scenario.network.bandwidth_mbit, out_dir))
        return fake_result(scenario, 1.0)

    monkeypatch.setattr(vmigrate.experiment, "run_experiment", fake_experiment)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    bed = FakeTestbed(healthy)
    progress = RichSweepProgress(Console(file=io.StringIO()))
    with runner_module.ExperimentRunner(bed, progress) as runner:  # type: ignore[arg-type]
        run_sweep(write(tmp_path, QUICK), tmp_path / "out", runner, progress)
    assert len(seen) == 8
    assert bed.ups == ([] if healthy else [100])  # the first cell's link rate
    assert bed.asked == ([] if healthy else [2])  # and its testbed's hosts
    assert bed.downs == (0 if healthy else 1)


@pytest.mark.parametrize(("has", "asked"), [(4, []), (2, [3])])
def test_a_scenario_s_hypervisor_count_is_a_minimum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has: int, asked: list[int]
) -> None:
    """A healthy testbed with more hosts than the scenario asks for stays as it is; one with
    fewer gets the missing ones."""
    import vmigrate.experiment

    monkeypatch.setattr(vmigrate.experiment, "run_experiment", lambda s, *_: fake_result(s, 1.0))
    monkeypatch.setattr("os.geteuid", lambda: 0)
    bed = FakeTestbed(healthy=True, hypervisors=has)
    progress = RichSweepProgress(Console(file=io.StringIO()))
    sweep = write(
        tmp_path, QUICK.replace("[matrix]", "[base.testbed]\nhypervisors = 3\n\n[matrix]")
    )
    with runner_module.ExperimentRunner(bed, progress) as runner:  # type: ignore[arg-type]
        run_sweep(sweep, tmp_path / "out", runner, progress)
    assert bed.asked == asked
    assert bed.hypervisors == max(has, 3)
    assert bed.downs == 0  # not brought up here: not taken down here


def test_the_real_runner_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    bed = FakeTestbed(False)
    runner = runner_module.ExperimentRunner(bed, RichSweepProgress(Console(file=io.StringIO())))  # type: ignore[arg-type]
    with pytest.raises(EnvironmentProblem, match="needs root"):
        run_sweep(write(tmp_path, QUICK), tmp_path / "out", runner)
    assert bed.ups == [] and runner.close() == []
