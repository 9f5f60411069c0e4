"""The benches print their tables whole off a terminal: written to a file (as `make bench >
bench.txt` does) no cell is cut to "…", where rich's own console would cut at 80 columns."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from bench.console import FILE_COLUMNS, bench_console
from bench.drain import Drained, drain_errors, guest_errors, guests, summary
from drain_fakes import RELEASE, S, fake_drain, lane_record, write_host_series
from rich.console import Console

from vmigrate.drain.account import DrainRecord, LaneRecord, make_bill
from vmigrate.drain.inputs import declared_inputs, plan_drain
from vmigrate.migration.orchestrator import Outcome

GROUPS = [  # examples/drain.toml's guests, so the names are as long as the bench's
    {"name": "idle"},
    {"name": "web", "count": 2},
    {"name": "dirty", "workload": {"kind": "memory", "dirty_rate_mib_s": 10}},
]


def drain_bills(tmp_path: Path) -> list[Drained]:
    """What bench/drain.py tabulates: a drain of the example's four guests (one failed, one
    not booted), as at 1, 2 and 4 at once, twice."""
    drain = fake_drain(name="drain", groups=GROUPS)
    inputs = declared_inputs(drain)
    lanes = [
        lane_record(drain, "drain-idle-1", "destination", (0.2, 2.0)),
        lane_record(drain, "drain-web-1", "hv3", (0.2, 3.0)),
        lane_record(drain, "drain-web-2", "destination", (2.0, 4.0), outcome=Outcome.FAILED),
        LaneRecord(drain.guest("drain-dirty-1"), error="the guest did not boot"),
    ]
    write_host_series(tmp_path)
    record = DrainRecord(
        drain=drain, testbed="vmigdb", hypervisors=3, started_at="now",
        marks_ns={"start": RELEASE - 30 * S, "first_release": RELEASE}, inputs=inputs,
        plan=plan_drain(drain, inputs), lanes=lanes,
    )  # fmt: skip
    bill = make_bill(record, tmp_path, "qemu")
    return [(k, rep, bill) for rep in (1, 2) for k in (1, 2, 4)]


def test_the_drain_bench_tables_print_whole_to_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # as a shell or CI exporting it would
    bills = drain_bills(tmp_path)
    narrow = Console(file=io.StringIO())  # rich's own: cuts, so this test has teeth
    narrow.print(summary(bills), guests(bills))
    assert "…" in narrow.file.getvalue()  # type: ignore[attr-defined]

    path = tmp_path / "bench.txt"
    with open(path, "w", encoding="utf-8") as out:
        console = bench_console(out)
        assert console.width == FILE_COLUMNS
        console.print(summary(bills), guests(bills))
    text = path.read_text(encoding="utf-8")
    assert "…" not in text
    for whole in ("drain-dirty-1", "drain-idle-1", "destination", "incomplete",
                  "median |guest error| %", "bytes error %", "measured s"):  # fmt: skip
        assert whole in text, whole
    assert "all 2" in text  # each parallelism's drains judged together


def test_the_goals_are_judged_on_every_drain_of_a_parallelism(tmp_path: Path) -> None:
    (bill,) = {id(b): b for _, _, b in drain_bills(tmp_path)}.values()
    assert bill.prediction is not None
    one_drain = [vm.errors.time_pct for vm in bill.vms if vm.errors and vm.errors.time_pct]
    assert one_drain  # the completed guests have an error
    twice: list[Drained] = [(2, 1, bill), (2, 2, bill)]
    assert sorted(guest_errors(twice)) == sorted(abs(e) for e in one_drain * 2)
    assert drain_errors(twice) == [bill.prediction.drain_time_error_pct] * 2


def test_the_bench_console_fits_a_terminal_and_only_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "100")
    assert bench_console(Terminal()).width == 100
    monkeypatch.setenv("FORCE_COLOR", "1")  # colour in a file: still a file's width
    assert bench_console(io.StringIO()).width == FILE_COLUMNS
