"""What a person sees in the terminal: stage lines, a live migration bar, a summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from vmigrate.hypervisor.base import MigrationStats, MigrationStatus
from vmigrate.migration.orchestrator import Outcome
from vmigrate.migration.preflight import Check
from vmigrate.result import Result
from vmigrate.result.migration import MigrationFigures
from vmigrate.result.outage import Outage
from vmigrate.result.service import Service

MIB = 1024 * 1024


class TerminalObserver:
    """Prints each stage and draws a live progress bar while the migration runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def stage(self, text: str) -> None:
        self._stop_bar()
        self.console.print(f"[cyan]•[/cyan] {text}")

    def check(self, check: Check) -> None:
        self._stop_bar()
        self.console.print(check_line(check), highlight=False, soft_wrap=True)

    def migration_progress(self, elapsed_s: float, stats: MigrationStats) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]migrating[/bold]"),
                BarColumn(bar_width=20),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("migrate", total=100.0, detail="")
        assert self._task is not None
        dirty_mib_s = stats.dirty_pages_rate * stats.page_size_bytes / MIB
        detail = (
            f"{stats.remaining_bytes / MIB:.0f} MiB left · pass {stats.iterations} · "
            f"dirty {dirty_mib_s:.0f} MiB/s · {stats.throughput_mbit_s:.0f} Mbit/s · "
            f"{stats.status.value}"
        )
        done = 100.0 if stats.status == MigrationStatus.COMPLETED else stats.percent_sent
        self._progress.update(self._task, completed=done, detail=detail)

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None

    def close(self) -> None:
        self._stop_bar()


CHECK_MARK = {"pass": "[green]✓ pass[/green]", "warn": "[yellow]! warn[/yellow]",
              "fail": "[red]✗ fail[/red]"}  # fmt: skip


def check_line(check: Check) -> str:
    """One pre-flight check as a line (rich markup): status, name, finding, and the fix."""
    fix = f"\n    [bold]fix:[/bold] {escape(check.fix)}" if check.fix else ""
    return f"  {CHECK_MARK[check.status]} [bold]{check.name}[/bold]: {escape(check.message)}{fix}"


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "[dim]—[/dim]"
    if isinstance(value, bool):
        return "[green]yes[/green]" if value else "[red]no[/red]"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _outage_rows(outage: Outage | None) -> list[tuple[str, str]]:
    """The outage's parts: what the vCPUs, the network and the service each lost."""
    if outage is None:
        return []
    return [
        ("  vCPU blackout (stop → run)", _fmt(outage.blackout_ms, " ms", 1)),
        ("  network reconvergence (run → 1st reply)", _fmt(outage.reconvergence_ms, " ms", 1)),
        ("  service outage (no HTTP response)", _fmt(outage.service_outage_ms, " ms", 1)),
        (f"  brownout (slower than {outage.sla_ms:g} ms)", _fmt(outage.brownout_ms, " ms", 0)),
    ]


def _along_the_way(mig: MigrationFigures) -> list[tuple[str, str]]:
    """What happened to the migration on its way: restarts, actions, post-copy pauses."""
    rows: list[tuple[str, str]] = []
    if mig.attempts > 1:
        rows.append(("attempts (restarted after a stall)", _fmt(mig.attempts)))
    rows += [(f"at {action.t_s:.1f} s", action.action) for action in mig.actions]
    rows += [(f"post-copy paused at {pause.paused_at_s:.1f} s",
              _fmt(pause.paused_ms, " ms", 0) + f" ({pause.cause})")
             for pause in mig.postcopy_pauses]  # fmt: skip
    return rows


def _service_rows(service: Service) -> list[tuple[str, str]]:
    """Latency per window and how the requests ended."""
    rows: list[tuple[str, str]] = []
    for window in ("baseline", "during", "after"):
        stats = service.latency_ms.get(window)
        if stats and stats.p50 is not None and stats.p99 is not None:
            rows.append((f"latency p50 / p99 {window}", f"{stats.p50:.1f} / {stats.p99:.1f} ms"))
    requests = service.requests
    if requests.sent:
        rows.append(
            (
                "requests ok / errors / timeouts",
                f"{requests.ok:,} / {requests.errors:,} / {requests.timeouts:,}",
            )
        )
    return rows


def _host_rows(result: Result) -> list[tuple[str, str]]:
    """Per host: the migration's extra CPU beside the guest's, and the extra traffic."""
    rows: list[tuple[str, str]] = []
    for host, figures in result.resources.hosts.items():
        work = figures.migration_cpu_seconds.extra
        vcpu = figures.vcpu_cpu_seconds.extra
        tx, rx = figures.net_tx_bytes.extra, figures.net_rx_bytes.extra
        rows.append((f"extra CPU {host}: migration / guest vCPUs",
                     f"{_fmt(work, '', 2)} / {_fmt(vcpu, ' CPU-s', 2)}"))  # fmt: skip
        rows.append(
            (f"extra net tx / rx {host}", f"{_fmt(_mib(tx), '', 1)} / {_fmt(_mib(rx), ' MiB', 1)}")
        )
    return rows


def summary_table(result: Result) -> Table:
    """The headline figures of one run: what it took, what the client saw, what hosts paid."""
    mig, ver, outcome = result.migration, result.verification, result.outcome
    colour = "green" if outcome == Outcome.COMPLETED else "red"
    name = result.scenario.get("name", "")
    table = Table(title=f"vmigrate — {name}: [{colour}]{outcome.value}[/{colour}]")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("strategy", _fmt(mig.strategy) + (" over TLS" if mig.tls else "")),
        ("total migration time", _fmt(mig.total_time_s, " s", 3)),
        ("setup time", _fmt(mig.setup_time_s, " s", 3)),
        ("downtime (hypervisor)", _fmt(mig.downtime_reported_ms, " ms", 1)),
        ("downtime (client probe)", _fmt(result.service.observed_downtime_ms, " ms", 1)),
        *_outage_rows(result.outage),
        ("transferred", _fmt(_mib(mig.transferred_bytes), " MiB", 1)),
        ("iterations", _fmt(mig.iterations)),
        ("average throughput", _fmt(mig.throughput_mbit_s, " Mbit/s", 1)),
        *_along_the_way(mig),
    ]
    fault = result.fault
    if fault and fault.injected:
        rows.append((f"fault {fault.kind}: outage / recovery",
                     f"{_fmt(fault.service_outage_ms, '', 0)} / "
                     f"{_fmt(fault.recovery_ms, ' ms', 0)}"))  # fmt: skip
    rows += _service_rows(result.service)
    rows += _host_rows(result)
    rows += [
        ("VM runs on", _fmt(ver.running_on)),
        ("service answers after (same guest)", _fmt(ver.service_ok_after)),
        ("memory checksum unchanged", _fmt(ver.memory_checksum_ok)),
        ("no guest write lost", _fmt(ver.memory_writes_intact)),
        ("disk content intact", _fmt(ver.disk_checksum_ok)),
    ]
    rows += [(f"check: {item.name.replace('_', ' ')}", _fmt(item.ok)) for item in result.checks]
    rows.append(("accelerator", _fmt(result.environment.accel)))
    for label, value in rows:
        table.add_row(label, value)
    if result.error:
        table.caption = f"[red]{result.error}[/red]"
    return table


def _mib(value: float | None) -> float | None:
    return None if value is None else value / MIB
