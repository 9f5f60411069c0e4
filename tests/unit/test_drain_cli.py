"""`vmigrate drain` on the command line: bad input is one line on stderr, exit code 2, and
nothing is created; --plan-only prints the plan of the declared sizes; a drain's exit code
follows its outcome and its summary is printed (the drain itself faked)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from drain_fakes import RELEASE, S, fake_drain, lane_record
from typer.testing import CliRunner

import vmigrate.drain.run as run_module
from vmigrate.cli import app
from vmigrate.drain.account import DrainRecord, make_bill
from vmigrate.drain.bill import DrainBill
from vmigrate.drain.inputs import declared_inputs, plan_drain
from vmigrate.hypervisor import cpu
from vmigrate.migration import preflight

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "drain.toml"


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Input these tests think is bad but is not must never start a real drain here."""

    def refuse(*_: Any) -> None:
        raise AssertionError("a test started a real drain")

    monkeypatch.setattr(run_module, "run_drain", refuse)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["drain", *args])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "policy.parallel_per_host=0"], "policy.parallel_per_host = 0 would never"),
        (["--set", "drain.host=hv7"], "drain.host: unknown host 'hv7'"),
        (["--set", "drain.receivers=['destination','hv9']"], "unknown host 'hv9'"),
        (["--set", "drain.receivers=['source']"], "source is the host being drained"),
        (["--set", "drain.free_memory_mib={destination=300,hv3=300}"], "fits on no receiving"),
        (["--set", "groups=[{name='x',count=30}]"], "must be less than or equal to 27"),
        (["--set", "base.migration.strategy=cold"], "models precopy and postcopy only"),
        (["--set", "base.migration.tls=true"], "TLS is not supported in a drain yet"),
        (["--testbed", "Bad_Name"], "testbed name 'Bad_Name' is invalid"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, args: list[str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    done = invoke(str(EXAMPLE), "--out", str(out), *args)
    assert done.exit_code == 2, done.output
    lines = [line for line in done.output.splitlines() if line.strip()]
    text = " ".join(done.output.split())
    assert says in text and text.startswith("vmigrate: error:"), done.output
    assert len(lines) <= 3  # one line, wrapped by the console at most twice
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_guest_that_does_not_fit_is_named_with_where(tmp_path: Path) -> None:
    done = invoke(str(EXAMPLE), "--set", "drain.free_memory_mib={destination=300,hv3=300}")
    text = " ".join(done.output.split())
    assert done.exit_code == 2
    assert "vm drain-dirty-1 (384 MiB" in text and "destination has 300 of its 300 MiB" in text


def test_plan_only_prints_the_declared_plan_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["drain", str(EXAMPLE), "--plan-only"], env={"COLUMNS": "160"})
    assert done.exit_code == 0, done.output
    assert "drain plan drain" in done.output and "drain-dirty-1" in done.output
    assert "declared sizes" in done.output
    assert list(tmp_path.iterdir()) == []


def bill_of(complete: bool) -> DrainBill:
    drain = fake_drain()
    inputs = declared_inputs(drain)
    lanes = [
        lane_record(drain, "d-web-1", "hv3", (0.2, 3.0)),
        lane_record(drain, "d-web-2", "destination", (0.2, 4.0)),
        lane_record(
            drain, "d-mem-1", "hv3", (3.1, 9.5), outcome="completed" if complete else "failed"
        ),
    ]
    record = DrainRecord(
        drain=drain, testbed="vmig", hypervisors=3, started_at="now",
        marks_ns={"start": RELEASE - 30 * S, "first_release": RELEASE}, inputs=inputs,
        plan=plan_drain(drain, inputs), lanes=lanes,
    )  # fmt: skip
    return make_bill(record, Path("/nonexistent"), "qemu")


def test_a_drain_needs_root_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    done = invoke(str(EXAMPLE), "--out", str(tmp_path / "d"))
    assert done.exit_code == 2 and "needs root" in done.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("complete", "code"), [(True, 0), (False, 1)])
def test_a_drains_exit_code_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, complete: bool, code: int
) -> None:
    ran: list[tuple[str, Path, str]] = []

    def run_drain(drain: Any, out_dir: Path, bed: Any, front: Any) -> DrainBill:
        ran.append((drain.name, out_dir, bed.name))
        return bill_of(complete)

    monkeypatch.setattr(run_module, "run_drain", run_drain)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(cpu, "load_catalog", lambda accel: None)
    monkeypatch.setattr(preflight, "check_names", lambda scenario, catalog: None)
    out = tmp_path / "d"
    done = CliRunner().invoke(
        app, ["drain", str(EXAMPLE), "--out", str(out), "-t", "vmigd"], env={"COLUMNS": "200"}
    )
    assert done.exit_code == code, done.output
    assert ran == [("drain", out, "vmigd")]
    assert "vmigrate drain d:" in done.output and "d-mem-1" in done.output
    assert "drain time 9.5 s (planned" in done.output
    assert f"bill: {out / 'drain.json'}" in done.output
