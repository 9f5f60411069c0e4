"""The planner against real drains (issue 12): examples/drain.toml (four guests: idle, two web,
one dirtying 10 MiB/s) drained off the source with at most 1, 2 and 4 migrations at once, on one
testbed of three hypervisor hosts, each drain REPEAT times (default 2, the parallelisms taking
turns). Per drain: the plan's drain time beside the measured one, and each guest's migration
time, planned and measured, with its error. Goals, per parallelism over its drains: the mean
drain time error within 10 %, the median per-guest time error (every guest of them pooled)
within 15 %. One drain of four guests is a small sample: which of two streams on a link gets
more of it varies from drain to drain (the planner shares it equally), and a guest whose
neighbour ends early moves faster than planned. The planner
uses the model the calibration bench fitted (its sweep in sweeps/bench-calibration, when it ran;
through $VMIGRATE_MODEL, so the model stored on this machine is not touched), else the stored one.

    python -m bench.drain [--repeat N] [PARALLELISM ...]    (as root; ~2 minutes per drain)
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.calibration import OUT as CALIBRATION_OUT
from bench.console import bench_console
from vmigrate.drain.bill import DrainBill
from vmigrate.drain.drain_file import load_drain
from vmigrate.drain.inputs import check_fits
from vmigrate.drain.progress import SilentFront
from vmigrate.drain.run import run_drain
from vmigrate.migration.calibration import fit, load_observations
from vmigrate.testbed.testbed import Testbed

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "drain.toml"
PARALLELISM = (1, 2, 4)
REPEAT = 2
TESTBED = "vmigdb"
GOAL_VM_PCT = 15.0
GOAL_DRAIN_PCT = 10.0


@contextlib.contextmanager
def bench_model(console: Console) -> Iterator[None]:
    """$VMIGRATE_MODEL set to the constants fitted on the calibration bench's sweep while the
    drains run (when that sweep exists), and back as it was after."""
    sweep = CALIBRATION_OUT / "bench-calibration"
    if not (sweep / "runs").is_dir():
        console.print("planner model: the stored one (no calibration bench sweep here)")
        yield
        return
    constants = fit(load_observations(sweep))
    before = os.environ.get("VMIGRATE_MODEL")
    with tempfile.TemporaryDirectory(prefix="vmigrate-bench-model-") as tmp:
        path = Path(tmp) / "model.json"
        path.write_text(constants.model_dump_json(indent=2) + "\n")
        console.print(f"planner model: fitted on {sweep} ({constants.fitted_runs} runs)")
        os.environ["VMIGRATE_MODEL"] = str(path)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("VMIGRATE_MODEL", None)
            else:
                os.environ["VMIGRATE_MODEL"] = before


Drained = tuple[int, int, DrainBill]  # parallelism, repetition (from 1), the bill


def drains(parallelism: tuple[int, ...] = PARALLELISM, repeat: int = REPEAT) -> list[Drained]:
    """The example drained `repeat` times per parallelism (1, 2, 4, 1, 2, 4, …: drifts of the
    machine touch every parallelism alike), on one testbed brought up for them all."""
    first = load_drain(EXAMPLE)
    bed = Testbed(TESTBED, hypervisors=first.spec.testbed.hypervisors)
    bed.up(first.base.network.bandwidth_mbit, hypervisors=first.spec.testbed.hypervisors)
    bills: list[Drained] = []
    try:
        for rep in range(1, repeat + 1):
            for k in parallelism:
                drain = load_drain(EXAMPLE, [f"policy.parallel_per_host={k}"])
                check_fits(drain)
                with tempfile.TemporaryDirectory(prefix=f"vmigrate-bench-drain-{k}-") as tmp:
                    bill = run_drain(drain, Path(tmp), Testbed(TESTBED), SilentFront())
                bills.append((k, rep, bill))
    finally:
        bed.down()
    return bills


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def _met(value: float | None, goal: float) -> str:
    if value is None:
        return "[dim]—[/dim]"
    return "[green]yes[/green]" if abs(value) <= goal else "[red]no[/red]"


def guest_errors(bills: list[Drained]) -> list[float]:
    """|time error| % of every guest of these drains that has one."""
    return [abs(vm.errors.time_pct) for _, _, bill in bills for vm in bill.vms
            if vm.errors is not None and vm.errors.time_pct is not None]  # fmt: skip


def drain_errors(bills: list[Drained]) -> list[float]:
    """The drain time error % of each of these drains that has one."""
    predictions = [bill.prediction for _, _, bill in bills if bill.prediction is not None]
    return [p.drain_time_error_pct for p in predictions if p.drain_time_error_pct is not None]


def summary(bills: list[Drained]) -> Table:
    """Per drain: its time planned and measured, its guests' median error; per parallelism:
    the mean drain error and the pooled median guest error, against the goals."""
    table = Table(title="drain: planned against measured (examples/drain.toml)")
    columns = ("at once", "drain", "outcome", "planned s", "measured s", "error %",
               f"≤ {GOAL_DRAIN_PCT:g} %", "median |guest error| %", f"≤ {GOAL_VM_PCT:g} %",
               "bias %")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for k in sorted({k for k, _, _ in bills}):
        mine = [b for b in bills if b[0] == k]
        for _, rep, bill in mine:
            p = bill.prediction
            vm_error = p.median_abs_vm_time_error_pct if p else None
            table.add_row(
                str(k), f"#{rep}", bill.outcome.value,
                f"{p.predicted_drain_time_s:.1f}" if p else "—",
                f"{bill.total_drain_time_s:.1f}" if bill.total_drain_time_s is not None else "—",
                _pct(p.drain_time_error_pct if p else None), "", _pct(vm_error), "",
                _pct(p.median_vm_time_error_pct if p else None),
            )  # fmt: skip
        drain_error = statistics.mean(d) if (d := drain_errors(mine)) else None
        vm_error = statistics.median(g) if (g := guest_errors(mine)) else None
        table.add_row(
            f"[b]{k}[/b]", f"[b]all {len(mine)}[/b]", "", "", "", f"[b]{_pct(drain_error)}[/b]",
            _met(drain_error, GOAL_DRAIN_PCT), f"[b]{_pct(vm_error)}[/b]",
            _met(vm_error, GOAL_VM_PCT), "", end_section=True,
        )  # fmt: skip
    return table


def guests(bills: list[Drained]) -> Table:
    """Every guest of every drain: where to, its time planned and measured, the error."""
    table = Table(title="per guest: migration time (the hypervisor's), planned against measured")
    for column in ("at once", "drain", "guest", "→ to", "start s", "planned s", "measured s",
                   "error %", "bytes error %"):  # fmt: skip
        table.add_column(column, justify="right" if column not in ("guest", "→ to") else "left")
    for k, rep, bill in sorted(bills, key=lambda b: (b[0], b[1])):
        for vm in bill.vms:
            planned = vm.predicted.time_s if vm.predicted else None
            table.add_row(
                str(k), f"#{rep}", vm.name, vm.destination_host or "—",
                f"{vm.start_s:.1f}" if vm.start_s is not None else "—",
                f"{planned:.2f}" if planned is not None else "—",
                f"{vm.migration_time_s:.2f}" if vm.migration_time_s is not None else "—",
                _pct(vm.errors.time_pct if vm.errors else None),
                _pct(vm.errors.transferred_pct if vm.errors else None),
            )  # fmt: skip
        table.rows[-1].end_section = True
    return table


def main(argv: list[str] | None = None) -> None:
    """Run the drains (`[--repeat N] [PARALLELISM ...]`, default twice 1, 2, 4) and print the
    tables."""
    args = list(argv or [])
    repeat = REPEAT
    if "--repeat" in args:
        at = args.index("--repeat")
        repeat = int(args[at + 1])
        del args[at : at + 2]
    wanted = tuple(int(a) for a in args) if args else PARALLELISM
    console = bench_console()
    with bench_model(console):
        bills = drains(wanted, repeat)
    console.print(summary(bills))
    console.print(guests(bills))
    if errors := guest_errors(bills):
        console.print(
            f"median |guest time error| over every drain: {statistics.median(errors):.1f} %"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
