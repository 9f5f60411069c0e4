"""The `vmigrate` command: parse, call, print. No logic lives here.

Any VmigrateError becomes one line on stderr and its exit code (2 for bad input); Ctrl-C and
SIGTERM unwind through the same clean-up paths as an error, then exit 130.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vmigrate import __version__
from vmigrate.cli_base import (
    REPO_EXAMPLES,
    OutOption,
    SetOption,
    TestbedName,
    UnsafeOption,
    app,
    console,
    default_out,
    guarded,
)
from vmigrate.errors import UsageError


@app.command()
def version() -> None:
    """Print vmigrate's version."""
    console.print(__version__)


@app.command()
def doctor() -> None:
    """Check this machine: root, QEMU, nfs-ganesha, kernel features, KVM, guest image."""
    from vmigrate.doctor import diagnose

    findings = guarded(diagnose)
    table = Table(title="vmigrate doctor")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column)
    for item in findings:
        if item.ok:
            status = "[green]ok[/green]"
        else:
            status = "[red]missing[/red]" if item.required else "[yellow]no[/yellow]"
        table.add_row(item.name, status, item.detail, "" if item.ok else item.fix)
    console.print(table)
    if any(not f.ok and f.required for f in findings):
        console.print("Fix the rows marked missing (or run `make setup`), then run doctor again.")
        raise typer.Exit(1)


def _run_scenario(
    path: Path | None,
    out: Path | None,
    overrides: list[str],
    testbed: str,
    skip_preflight: bool = False,
    unsafe: bool = False,
    undefine_source: bool = False,
) -> None:
    from vmigrate.config import load_scenario, validate_scenario
    from vmigrate.experiment import run_experiment
    from vmigrate.hypervisor.cpu import load_catalog
    from vmigrate.migration.orchestrator import Outcome
    from vmigrate.migration.preflight import check_names
    from vmigrate.own_hosts import run_own_hosts
    from vmigrate.report.terminal import TerminalObserver, summary_table
    from vmigrate.result import Result
    from vmigrate.testbed.testbed import Testbed

    def body() -> tuple[Result, Path]:
        scenario = (
            load_scenario(path, overrides)
            if path is not None
            else validate_scenario({"name": "demo"}, "built-in demo")
        )
        out_dir = out or default_out(scenario.name)
        if undefine_source and not scenario.hosts.real:
            raise UsageError(
                "--undefine-source is for your own hosts (hosts.source_uri, destination_uri, "
                "domain); the testbed's guest is vmigrate's and removed after every run anyway"
            )
        if scenario.hosts.real:  # the user's own hosts: no testbed, no guest of ours
            console.print(f"[bold]vmigrate[/bold] {scenario.name} (your own hosts) → {out_dir}")
            observer = TerminalObserver(console)
            try:
                result = run_own_hosts(
                    scenario, out_dir, observer, skip_preflight, unsafe, undefine_source
                )
                return result, out_dir
            finally:
                observer.close()
        check_names(scenario, load_catalog("tcg"))  # model names are the same under KVM
        bed = Testbed(testbed)
        console.print(f"[bold]vmigrate[/bold] {scenario.name} → {out_dir}")
        observer = TerminalObserver(console)
        try:
            result = run_experiment(scenario, out_dir, bed, observer, skip_preflight, unsafe)
            return result, out_dir
        finally:
            observer.close()

    result, out_dir = guarded(body)
    console.print(summary_table(result))
    console.print(f"result: {out_dir / 'result.json'}  report: {out_dir / 'report.html'}")
    if result.outcome != Outcome.COMPLETED:
        raise typer.Exit(1)


@app.command("run")
def run_command(
    scenario: Annotated[Path, typer.Argument(help="scenario TOML file (see examples/)")],
    out: OutOption = None,
    overrides: SetOption = None,
    testbed: TestbedName = "vmig",
    skip_preflight: Annotated[
        bool,
        typer.Option(
            "--skip-preflight",
            help="go ahead even if pre-flight checks fail (recorded in result.json)",
        ),
    ] = False,
    unsafe: UnsafeOption = False,
    undefine_source: Annotated[
        bool,
        typer.Option(
            "--undefine-source",
            help="your own hosts: once the migration completed, remove the domain's definition "
            "on the source (libvirt's --undefinesource); by default the source keeps it",
        ),
    ] = False,
) -> None:
    """Run one scenario: pre-flight, boot, load, migrate, measure; write result.json and logs.

    The testbed is brought up if needed and torn down afterwards if this run made it.
    Pre-flight checks run first (see `vmigrate preflight`); a failing one stops the run
    before the guest boots, unless --skip-preflight.
    With hosts.source_uri, destination_uri and domain (your own hosts, through libvirt) no
    testbed is built: the running domain is migrated and measured from this machine, and
    stays on the destination.
    Exit 0 when the migration completed, 1 when it did not, 2 on bad input.
    """
    _run_scenario(scenario, out, overrides or [], testbed, skip_preflight, unsafe, undefine_source)


@app.command("preflight")
def preflight_command(
    scenario: Annotated[Path, typer.Argument(help="scenario TOML file (see examples/)")],
    overrides: SetOption = None,
    testbed: TestbedName = "vmig",
    unsafe: UnsafeOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Check a scenario before anything moves: CPU compatibility (and the baseline model),
    disk cache safety, storage reachability, memory, ports, QEMU versions and machine type,
    and a pre-copy estimate from the guest's measured dirty rate and the link's rate.

    Each check says pass, warn or fail, what is wrong and how to fix it. The guest boots on
    the source for the estimate; nothing migrates. Exit 0 when nothing failed, 1 when a check
    failed, 2 on bad input.
    """
    from vmigrate.config import load_scenario
    from vmigrate.experiment import SilentObserver, run_preflight
    from vmigrate.hypervisor.cpu import load_catalog
    from vmigrate.migration.preflight import check_names
    from vmigrate.report.terminal import TerminalObserver, check_line
    from vmigrate.testbed.testbed import Testbed

    def body() -> Any:
        loaded = load_scenario(scenario, overrides or [])
        check_names(loaded, load_catalog("tcg"))
        out_dir = Path(tempfile.mkdtemp(prefix=f"vmigrate-preflight-{loaded.name}-"))
        observer = SilentObserver() if as_json else TerminalObserver(console)
        try:
            return run_preflight(loaded, out_dir, Testbed(testbed), observer, unsafe)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    report = guarded(body)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        failed = len(report.failures)
        warned = sum(c.status == "warn" for c in report.checks)
        console.print(
            f"[bold]pre-flight[/bold]: guest CPU {report.cpu_model}, machine {report.machine}; "
            f"{len(report.checks)} checks, "
            + (f"[red]{failed} failed[/red]" if failed else "[green]none failed[/green]")
            + (f", [yellow]{warned} warned[/yellow]" if warned else ""),
            highlight=False,
        )
        for check in report.failures:
            console.print(check_line(check), highlight=False, soft_wrap=True)
    if report.failures:
        raise typer.Exit(1)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (the --out of `run`)")],
) -> None:
    """Re-analyse a run from its recorded series; rewrite result.json and report.html."""
    from vmigrate.report.rebuild import rebuild
    from vmigrate.report.terminal import summary_table

    result, html = guarded(lambda: rebuild(run_dir))
    console.print(summary_table(result))
    console.print(f"report: {html}")


@app.command()
def demo(out: OutOption = None, testbed: TestbedName = "vmig") -> None:
    """Run the default experiment (examples/demo.toml): a web guest migrated with pre-copy."""
    path = REPO_EXAMPLES / "demo.toml"
    _run_scenario(path if path.exists() else None, out, [], testbed)


# The other commands live beside: importing them registers them on `app`.
import vmigrate.cli_drain  # noqa: E402
import vmigrate.cli_studies  # noqa: E402
import vmigrate.cli_testbed  # noqa: E402, F401


def main() -> None:
    """Entry point for `python -m vmigrate`."""
    app(prog_name="vmigrate")


if __name__ == "__main__":
    main()
