"""`vmigrate plan`: a drain predicted before anything moves; `vmigrate drain`: a testbed host
drained for real, with the plan beside what happened."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vmigrate.cli_base import OutOption, TestbedName, app, console, default_out, guarded
from vmigrate.errors import EnvironmentProblem, UsageError

if TYPE_CHECKING:
    from vmigrate.drain.drain_file import Drain
    from vmigrate.drain.plan import Plan
    from vmigrate.testbed.testbed import Testbed


@app.command("plan")
def plan_command(
    cluster: Annotated[Path, typer.Argument(help="cluster TOML file (see examples/cluster.toml)")],
    search: Annotated[
        bool,
        typer.Option(
            "--search",
            help="try the orders and placements the policy leaves to the planner and every "
            "parallelism up to its limits; plan with the one that finishes soonest within "
            "its bounds",
        ),
    ] = False,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="also write the plan to FILE as JSON")
    ] = None,
) -> None:
    """Predict draining hosts: when each VM moves, where to, its downtime and bytes, the total
    time, and which VMs will not converge (with the fix).

    The hosts (link rates, free memory, CPU models), the VMs (memory, touched memory, dirty
    rates) and the policy (parallelism, order, placement, bounds) come from CLUSTER; each
    migration follows the calibrated single-migration model, and concurrent migrations share
    their links. Nothing moves. Exit 0 when every VM converges within the bounds, 1 when one
    does not, 2 on bad input (a VM that fits nowhere among them).
    """
    from vmigrate.drain.cluster import load_cluster
    from vmigrate.drain.plan import plan
    from vmigrate.drain.search import search as search_plan
    from vmigrate.migration.estimate_check import load_constants
    from vmigrate.report.drain_plan import plan_notes, plan_summary, plan_table

    def body() -> Plan:
        loaded = load_cluster(cluster)
        constants = load_constants()
        planned = search_plan(loaded, constants) if search else plan(loaded, constants)
        if json_file is not None:
            try:
                json_file.write_text(planned.model_dump_json(indent=2) + "\n")
            except OSError as exc:
                raise UsageError(f"--json {json_file}: cannot write: {exc.strerror}") from None
        return planned

    planned = guarded(body)
    console.print(plan_table(planned))
    for note in plan_notes(planned):
        console.print(note, highlight=False, soft_wrap=True)
    console.print(plan_summary(planned), highlight=False, soft_wrap=True)
    if not (planned.complete and planned.respects_bounds):
        raise typer.Exit(1)


@app.command("drain")
def drain_command(
    drain_file: Annotated[
        Path, typer.Argument(help="drain TOML file (see examples/drain.toml)", metavar="DRAIN")
    ],
    out: OutOption = None,
    testbed: TestbedName = "vmig",
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="override a key of the drain file, e.g. --set policy.parallel_per_host=1 or "
            "--set base.phases.after_s=2",
        ),
    ] = None,
    plan_only: Annotated[
        bool,
        typer.Option(
            "--plan-only",
            help="only plan the drain from the sizes the file declares (each guest's whole "
            "memory touched, the memory workload's dirty rate) and print it; nothing is "
            "created",
        ),
    ] = False,
) -> None:
    r"""Drain a testbed host for real: boot guests on it, migrate them all away under a
    policy, and bill the whole drain, beside what the planner predicted.

    DRAIN: groups of guests (\[\[groups]]: count, vm, workload, load, migration keys) over
    keys they share (\[base]: a scenario's), the host drained and the hosts that may receive
    (\[drain]), and the policy (\[policy], as in `vmigrate plan` files: how many at once per
    host and in all, the order, the placement). Try examples/drain.toml.

    Every guest boots on the drained host under its own probe and HTTP load. Once all serve,
    each is measured (memory holding data, dirty rate), the link once, and the planner plans the
    drain (DIR/plan.json). After a common baseline the guests leave in the plan's order,
    each to the host the plan chose, no more at once than the policy allows; a live table
    shows every migration.

    DIR (default runs/NAME-TIME) gets vms/NAME/ per guest (its result.json and report.html,
    as `vmigrate run` writes them), drain.json (the bill: drain time, every guest beside the
    plan, bytes and peak rate per link, peak CPU per host, the worst service impact; see
    docs/drain.schema.json), report.html (a Gantt of the migrations over the links' use),
    plan.json, series/ and vmigrate.log.

    The testbed gets the hosts the file asks for (\[testbed] hypervisors) and is taken down
    afterwards if the drain brought it up. Exit 0 when every guest migrated and was found
    intact on its new host, 1 otherwise, 2 on bad input (an unknown host, parallel = 0,
    more guests than the receiving hosts hold: nothing is created), 130 on Ctrl-C.
    """
    drain, planned, bed = guarded(lambda: _prepare(drain_file, overrides or [], testbed, plan_only))
    if plan_only:
        _print_plan(planned)
        if not planned.complete:
            raise typer.Exit(1)
        return
    if not _drain(drain, out or default_out(drain.name), bed):
        raise typer.Exit(1)


def _prepare(
    path: Path, overrides: list[str], testbed: str, plan_only: bool
) -> tuple[Drain, Plan, Testbed]:
    """The drain file validated, its guests checked to fit (the plan of the declared sizes),
    the testbed named; for a real drain also root and the guests' CPU models and machine
    types. :raise UsageError: bad input (nothing is created)."""
    from vmigrate.drain.drain_file import load_drain
    from vmigrate.drain.inputs import check_fits
    from vmigrate.hypervisor.cpu import load_catalog
    from vmigrate.migration.estimate_check import load_constants
    from vmigrate.migration.preflight import check_names
    from vmigrate.testbed.testbed import Testbed

    drain = load_drain(path, overrides)
    planned = check_fits(drain, load_constants())
    bed = Testbed(testbed)  # a bad name is bad input too
    if not plan_only:
        if os.geteuid() != 0:
            raise EnvironmentProblem(
                "vmigrate drain needs root for namespaces and taps: run it with sudo "
                "(--plan-only does not)"
            )
        catalog = load_catalog("tcg")  # model names are the same under KVM
        for scenario in {g.scenario.vm.cpu_model: g.scenario for g in drain.guests}.values():
            check_names(scenario, catalog)
    return drain, planned, bed


def _print_plan(planned: Plan) -> None:
    """The plan of the declared sizes, as `vmigrate plan` prints one."""
    from vmigrate.report.drain_plan import plan_notes, plan_summary, plan_table

    console.print(plan_table(planned))
    for note in plan_notes(planned):
        console.print(note, highlight=False, soft_wrap=True)
    console.print(plan_summary(planned), highlight=False, soft_wrap=True)
    console.print("[dim]declared sizes; the drain measures the running guests first[/dim]")


def _drain(drain: Drain, out_dir: Path, bed: Testbed) -> bool:
    """Run the drain with the live table, print its summary; True when it completed."""
    from vmigrate.drain.bill import DrainOutcome
    from vmigrate.drain.run import run_drain
    from vmigrate.report.drain_terminal import DrainTerminal, summary_table

    console.print(
        f"[bold]vmigrate drain[/bold] {drain.name}: {len(drain.guests)} guests off "
        f"{drain.host} → {', '.join(drain.receivers)} · {out_dir}",
        highlight=False,
    )
    front = DrainTerminal(console)
    try:
        bill = guarded(lambda: run_drain(drain, out_dir, bed, front))
    finally:
        front.stop()
    console.print(summary_table(bill, console.width))
    console.print(
        f"bill: {out_dir / 'drain.json'}  report: {out_dir / 'report.html'}  "
        f"guests: {out_dir / 'vms'}/",
        highlight=False,
    )
    return bill.outcome == DrainOutcome.COMPLETED
