"""The planner against real drains (issue 12): examples/drain.toml (four guests: idle, two web,
one dirtying 10 MiB/s) drained off the source with at most 1, 2 and 4 migrations at once, on one
testbed of three hypervisor hosts. Per parallelism: the plan's drain time beside the measured
one, and each guest's migration time, planned and measured, with its error; the medians.
Goals: the median per-guest time error within 15 %, the drain time's within 10 %. The planner
uses the model the calibration bench fitted (its sweep in sweeps/bench-calibration, when it ran;
through $VMIGRATE_MODEL, so the model stored on this machine is not touched), else the stored one.

    python -m bench.drain [PARALLELISM ...]      (as root; a few minutes per drain)
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


def drains(parallelism: tuple[int, ...] = PARALLELISM) -> list[tuple[int, DrainBill]]:
    """The example drained once per parallelism, on one testbed brought up for them all."""
    first = load_drain(EXAMPLE)
    bed = Testbed(TESTBED, hypervisors=first.spec.testbed.hypervisors)
    bed.up(first.base.network.bandwidth_mbit, hypervisors=first.spec.testbed.hypervisors)
    bills = []
    try:
        for k in parallelism:
            drain = load_drain(EXAMPLE, [f"policy.parallel_per_host={k}"])
            check_fits(drain)
            with tempfile.TemporaryDirectory(prefix=f"vmigrate-bench-drain-{k}-") as tmp:
                bills.append((k, run_drain(drain, Path(tmp), Testbed(TESTBED), SilentFront())))
    finally:
        bed.down()
    return bills


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def _met(value: float | None, goal: float) -> str:
    if value is None:
        return "[dim]—[/dim]"
    return "[green]yes[/green]" if abs(value) <= goal else "[red]no[/red]"


def summary(bills: list[tuple[int, DrainBill]]) -> Table:
    """Per parallelism: the drain's time planned and measured, the per-guest errors' median."""
    table = Table(title="drain: planned against measured (examples/drain.toml)")
    columns = ("at once", "outcome", "planned s", "measured s", "error %",
               f"≤ {GOAL_DRAIN_PCT:g} %", "median |guest error| %", f"≤ {GOAL_VM_PCT:g} %",
               "bias %")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for k, bill in bills:
        p = bill.prediction
        drain_error = p.drain_time_error_pct if p else None
        vm_error = p.median_abs_vm_time_error_pct if p else None
        table.add_row(
            str(k), bill.outcome.value,
            f"{p.predicted_drain_time_s:.1f}" if p else "—",
            f"{bill.total_drain_time_s:.1f}" if bill.total_drain_time_s is not None else "—",
            _pct(drain_error), _met(drain_error, GOAL_DRAIN_PCT), _pct(vm_error),
            _met(vm_error, GOAL_VM_PCT), _pct(p.median_vm_time_error_pct if p else None),
        )  # fmt: skip
    return table


def guests(bills: list[tuple[int, DrainBill]]) -> Table:
    """Every guest of every drain: where to, its time planned and measured, the error."""
    table = Table(title="per guest: migration time (the hypervisor's), planned against measured")
    for column in ("at once", "guest", "→ to", "start s", "planned s", "measured s", "error %",
                   "bytes error %"):  # fmt: skip
        table.add_column(column, justify="right" if column not in ("guest", "→ to") else "left")
    for k, bill in bills:
        for vm in bill.vms:
            planned = vm.predicted.time_s if vm.predicted else None
            table.add_row(
                str(k), vm.name, vm.destination_host or "—",
                f"{vm.start_s:.1f}" if vm.start_s is not None else "—",
                f"{planned:.2f}" if planned is not None else "—",
                f"{vm.migration_time_s:.2f}" if vm.migration_time_s is not None else "—",
                _pct(vm.errors.time_pct if vm.errors else None),
                _pct(vm.errors.transferred_pct if vm.errors else None),
            )  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> None:
    """Run the drains (parallelism from `argv`, default 1, 2, 4) and print the tables."""
    wanted = tuple(int(a) for a in argv) if argv else PARALLELISM
    console = bench_console()
    with bench_model(console):
        bills = drains(wanted)
    console.print(summary(bills))
    console.print(guests(bills))
    errors = [abs(vm.errors.time_pct) for _, b in bills for vm in b.vms
              if vm.errors and vm.errors.time_pct is not None]  # fmt: skip
    if errors:
        console.print(
            f"median |guest time error| over every drain: {statistics.median(errors):.1f} %"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
