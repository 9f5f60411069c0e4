"""`vmigrate plan`: a drain predicted before anything moves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vmigrate.cli_base import app, console, guarded
from vmigrate.errors import UsageError

if TYPE_CHECKING:
    from vmigrate.drain.plan import Plan


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
