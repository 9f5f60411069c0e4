"""`vmigrate sweep`, `soak` and `calibrate`: many runs, and what is learnt from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmigrate.cli_base import (
    REPO_EXAMPLES,
    OutOption,
    SetOption,
    TestbedName,
    app,
    console,
    default_out,
    err_console,
    guarded,
)


@app.command("sweep")
def sweep_command(
    sweep_file: Annotated[Path, typer.Argument(help="sweep TOML file (see examples/)")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="sweep directory (default sweeps/NAME); reused to resume"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="override a key of the base scenario, e.g. --set "
            "phases.after_s=2 (matrix values still win)",
        ),
    ] = None,
    testbed: TestbedName = "vmig",
) -> None:
    """Run a base scenario over a matrix of values, repeatedly, on one testbed; compare the cells.

    Every cell's scenario is validated before the first run. Each run gets a fresh VM and a row
    in DIR/sweep.db; re-running the same command resumes, skipping runs that have a result.
    Writes DIR/summary.json (per-cell mean, median, stdev, 95 % CI) and DIR/comparison.html.
    Exit 0 when every run has a result (whatever its outcome), 1 when some run crashed (it is
    retried next time), 2 on bad input.
    """
    from vmigrate.report.fault_matrix import fault_table, is_fault_sweep, write_fault_matrix
    from vmigrate.sweep.execute import SweepSummary, execute_sweep
    from vmigrate.sweep.plan import load_sweep
    from vmigrate.sweep.progress import RichSweepProgress
    from vmigrate.sweep.runner import ExperimentRunner
    from vmigrate.sweep.summary import summary_table
    from vmigrate.testbed.testbed import Testbed

    def body() -> SweepSummary:
        sweep = load_sweep(sweep_file, overrides or [])
        bed = Testbed(testbed)
        out_dir = out or Path("sweeps") / sweep.name
        console.print(f"[bold]vmigrate sweep[/bold] {sweep.name} → {out_dir}")
        progress = RichSweepProgress(console)
        with ExperimentRunner(bed, progress) as runner:
            return execute_sweep(sweep, out_dir, runner, progress)

    summary = guarded(body)
    console.print(summary_table(summary.document))
    sweep_dir = summary.summary_path.parent
    if is_fault_sweep(sweep_dir):
        cells, faults_md = write_fault_matrix(sweep_dir)
        console.print(fault_table(cells))
        console.print(f"fault table: {faults_md}")
    console.print(
        f"ran {summary.ran}, skipped {summary.skipped} (done before) · database: "
        f"{summary.db_path}  summary: {summary.summary_path}  "
        f"comparison: {summary.comparison_path}",
        soft_wrap=True,
    )
    if summary.crashed:
        err_console.print(f"[red]vmigrate: {summary.crashed} run(s) crashed[/red]; run it again")
        raise typer.Exit(1)


@app.command("soak")
def soak_command(
    scenario: Annotated[
        Path | None,
        typer.Argument(
            help="scenario TOML file (default examples/web.toml: a web guest under load)"
        ),
    ] = None,
    hops: Annotated[int, typer.Option("--hops", "-n", help="migrations to make", min=1)] = 50,
    out: OutOption = None,
    overrides: SetOption = None,
    testbed: Annotated[
        str, typer.Option("--testbed", "-t", help="testbed name (the soak builds and removes it)")
    ] = "vmsoak",
    pause_s: Annotated[
        float, typer.Option("--pause-s", help="seconds the guest serves between hops", min=0)
    ] = 1.0,
) -> None:
    """Migrate one guest under load back and forth between source and destination, HOPS
    times in one testbed, each strategy in turn (precopy, postcopy, multifd, xbzrle,
    auto-converge, hybrid).

    After every hop the guest's memory and disk integrity is checked and vmigrate's own RSS
    and open file descriptors are sampled; at the end the testbed is taken down and anything
    it left is listed. Writes OUT/soak.json. Exit 0 when every hop moved the VM, the guest
    came through each whole and nothing was left behind; 1 otherwise; 2 on bad input.
    """
    from vmigrate.config import load_scenario
    from vmigrate.report.soak import SoakConsole, soak_table
    from vmigrate.soak import SoakReport, run_soak
    from vmigrate.testbed.testbed import Testbed

    def body() -> SoakReport:
        path = scenario or REPO_EXAMPLES / "web.toml"
        loaded = load_scenario(path, overrides or [])
        out_dir = out or default_out(f"soak-{loaded.name}")
        console.print(f"[bold]vmigrate soak[/bold] {loaded.name}, {hops} hops → {out_dir}")
        return run_soak(loaded, out_dir, Testbed(testbed), SoakConsole(console), hops, pause_s)

    report = guarded(body)
    console.print(soak_table(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command("calibrate")
def calibrate_command(
    sweep_dir: Annotated[Path, typer.Argument(help="a sweep's directory (its runs/*/result.json)")],
    check: Annotated[
        Path | None, typer.Option("--check", help="held-out sweep directory: the fit's error there")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print, do not store")] = False,
) -> None:
    """Fit the migration model's constants to measured runs and store them where `run`,
    `preflight` and planners read them ($VMIGRATE_MODEL, default /var/lib/vmigrate/model.json).

    Prints the model's median error with the plain physics and with the fitted constants, on
    the runs it was fitted to and (--check) on held-out runs, over all and per strategy.
    """
    from vmigrate.migration.calibration import fit, load_observations
    from vmigrate.migration.estimate import PHYSICS
    from vmigrate.paths import model_path
    from vmigrate.report.calibration import by_strategy, error_table

    def body() -> None:
        fitted_on = load_observations(sweep_dir)
        sets = [("fitted on", fitted_on)]
        if check is not None:
            sets.append(("held out", load_observations(check)))
        constants = fit(fitted_on)
        models = [("physics", PHYSICS), ("calibrated", constants)]
        console.print(error_table("the model's error, median over runs", by_strategy(sets), models))
        console.print(constants.model_dump_json(indent=2), highlight=False)
        if not dry_run:
            path = model_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(constants.model_dump_json(indent=2) + "\n")
            console.print(f"stored: {path}")

    guarded(body)
