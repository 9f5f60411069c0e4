"""The `vmigrate` command: parse, call, print. No logic lives here.

Any VmigrateError becomes one line on stderr and its exit code (2 for bad input); Ctrl-C and
SIGTERM unwind through the same clean-up paths as an error, then exit 130.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vmigrate import __version__
from vmigrate.errors import UsageError, VmigrateError

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help=(
        "Live-migrate a VM between hosts and measure what it costs.\n\n"
        "On one machine, vmigrate builds a testbed of namespaced hosts (source, destination, "
        "an NFS storage server, a client), boots a real guest under QEMU, migrates it while "
        "its service runs, and writes result.json with the bill.\n\n"
        "Start with `vmigrate demo`, or `vmigrate run examples/demo.toml --set vm.memory_mib=1024`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(help="The guest image (Debian kernel, busybox, vmigrate's agent).")
testbed_app = typer.Typer(help="The embedded testbed of namespaced hosts.")
app.add_typer(image_app, name="image")
app.add_typer(testbed_app, name="testbed")

TestbedName = Annotated[
    str, typer.Option("--testbed", "-t", help="testbed name: prefix of its namespaces")
]
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def guarded(action: Callable[[], T]) -> T:
    """Run a command body: errors become one line and an exit code; Ctrl-C exits 130."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return action()
    except VmigrateError as exc:
        err_console.print(
            f"[red]vmigrate: error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("vmigrate: interrupted; cleaned up", highlight=False)
        raise typer.Exit(130) from None


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


@image_app.command("build")
def image_build(
    force: Annotated[bool, typer.Option("--force", help="rebuild even if cached")] = False,
) -> None:
    """Build (or reuse) the guest image from Debian packages; print where it is."""
    from vmigrate.guest.build import build_image

    image = guarded(lambda: build_image(force, lambda s: console.print(f"[cyan]•[/cyan] {s}")))
    console.print(f"guest image {image.digest[:12]}: kernel {image.kernel_version}")
    console.print(f"  kernel {image.kernel}\n  initrd {image.initrd}")


@testbed_app.command("up")
def testbed_up(
    name: TestbedName = "vmig",
    bandwidth_mbit: Annotated[
        float, typer.Option(help="rate of every host's link (tbf), Mbit/s", min=0.001)
    ] = 1000.0,
    libvirt: Annotated[
        bool, typer.Option("--libvirt", help="also run a libvirtd on each hypervisor host")
    ] = False,
) -> None:
    """Create the hosts (namespaces), the switch, the shaped links and the NFS server."""
    from vmigrate.testbed.testbed import Testbed

    def body() -> None:
        testbed = Testbed(name)
        testbed.up(bandwidth_mbit, lambda s: console.print(f"[cyan]•[/cyan] {s}"), libvirt)
        _print_status(testbed.status())

    guarded(body)


@testbed_app.command("down")
def testbed_down(name: TestbedName = "vmig") -> None:
    """Remove every namespace, process and file of the testbed (also after a killed run)."""
    from vmigrate.testbed.testbed import Testbed

    problems = guarded(lambda: Testbed(name).down())
    if problems:
        for line in problems:
            err_console.print(f"[red]vmigrate: could not remove:[/red] {line}")
        raise typer.Exit(1)
    console.print(f"testbed {name}: nothing left")


@testbed_app.command("recover")
def testbed_recover(
    name: TestbedName = "vmig",
    wait_s: Annotated[
        float, typer.Option(help="how long the migration may go on without us first", min=0)
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Find the VM after vmigrate died mid-run, and settle it on one host.

    The hypervisor finishes (or, after --wait-s, cancels) the migration the dead run started;
    the stale copy and the dead run's clients are stopped; the guest is asked whether it serves
    and whether its memory and disk writes survived. The testbed stays up (`vmigrate testbed
    down` removes it). Exit 0 when the VM runs on a host and is intact, 1 otherwise.
    """
    from vmigrate.recover import recover
    from vmigrate.testbed.testbed import Testbed

    found = guarded(lambda: asyncio.run(recover(Testbed(name), wait_s)))
    if as_json:
        print(json.dumps(found.as_dict(), indent=2))
    else:
        for action in found.actions:
            console.print(f"[cyan]•[/cyan] {action}", highlight=False)
        console.print(
            f"the VM runs on: [bold]{found.vm_on}[/bold]; memory and disk intact: "
            + ("[green]yes[/green]" if found.intact else "[red]no[/red]"),
            highlight=False,
        )
    if found.vm_on == "none" or not found.intact:
        raise typer.Exit(1)


@testbed_app.command("status")
def testbed_status(
    name: TestbedName = "vmig",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show the testbed's hosts, addresses and processes."""
    from vmigrate.testbed.testbed import Testbed

    status = guarded(lambda: Testbed(name).status())
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    if not status["up"]:
        raise typer.Exit(1)


def _print_status(status: dict[str, Any]) -> None:
    state = "[green]up[/green]" if status["up"] else "[red]down[/red]"
    table = Table(title=f"testbed {status['name']}: {state}  ({status['bandwidth_mbit']} Mbit/s)")
    for column in ("host", "namespace", "address", "present"):
        table.add_column(column)
    for role, host in status["hosts"].items():
        table.add_row(role, host["netns"], host["ip"], "yes" if host["present"] else "no")
    console.print(table)
    for proc in status["processes"]:
        alive = "alive" if proc["alive"] else "[red]gone[/red]"
        console.print(f"  process {proc['label']} pid {proc['pid']}: {alive}")
    for role, uri in status.get("libvirt", {}).items():
        console.print(f"  libvirt {role}: {uri}", soft_wrap=True)


def _default_out(name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


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
    from vmigrate.migration.preflight import check_names
    from vmigrate.own_hosts import run_own_hosts
    from vmigrate.report.terminal import TerminalObserver, summary_table
    from vmigrate.testbed.testbed import Testbed

    def body() -> tuple[dict[str, Any], Path]:
        scenario = (
            load_scenario(path, overrides)
            if path is not None
            else validate_scenario({"name": "demo"}, "built-in demo")
        )
        out_dir = out or _default_out(scenario.name)
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
    if result["outcome"] != "completed":
        raise typer.Exit(1)


OutOption = Annotated[
    Path | None, typer.Option("--out", "-o", help="run directory (default runs/NAME-TIME)")
]
UnsafeOption = Annotated[
    bool,
    typer.Option(
        "--unsafe",
        help="migrate a shared disk even with a cache mode that is unsafe to migrate "
        "(writeback, writethrough, unsafe); pre-flight then warns instead of failing",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a scenario key, e.g. --set migration.strategy=cold"),
]


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
        out_dir = out or _default_out(f"soak-{loaded.name}")
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
    the runs it was fitted to and (--check) on held-out runs.
    """
    from vmigrate.migration.calibration import fit, load_observations
    from vmigrate.migration.estimate import PHYSICS
    from vmigrate.paths import model_path
    from vmigrate.report.calibration import error_table

    def body() -> None:
        fitted_on = load_observations(sweep_dir)
        sets = [("fitted on", fitted_on)]
        if check is not None:
            sets.append(("held out", load_observations(check)))
        constants = fit(fitted_on)
        models = [("physics", PHYSICS), ("calibrated", constants)]
        console.print(error_table("the model's error, median over runs", sets, models))
        console.print(constants.model_dump_json(indent=2), highlight=False)
        if not dry_run:
            path = model_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(constants.model_dump_json(indent=2) + "\n")
            console.print(f"stored: {path}")

    guarded(body)


def main() -> None:
    """Entry point for `python -m vmigrate`."""
    app(prog_name="vmigrate")


if __name__ == "__main__":
    main()
