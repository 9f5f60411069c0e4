"""A soak in the terminal: stage lines until the first hop, one line per hop, a summary."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vmigrate.hypervisor.base import MigrationStats
from vmigrate.migration.preflight import Check
from vmigrate.soak import Hop, SoakReport

SHORT = {"source": "src", "destination": "dst"}
MIB = 1024 * 1024


def _short(role: str) -> str:
    return SHORT.get(role, role)


def hop_line(hop: Hop, planned: int) -> str:
    """One hop as a line (rich markup): number, direction, strategy, outcome, times, integrity,
    vmigrate's footprint."""
    width = len(str(planned))
    mark = "[green]✓[/green]" if hop.moved and hop.intact else "[red]✗[/red]"
    times = (
        f"{hop.total_time_s:6.2f} s  downtime {hop.downtime_ms:7.1f} ms"
        if hop.total_time_s is not None and hop.downtime_ms is not None
        else f"{hop.outcome.value:>8}{'':19}"
    )
    intact = "intact" if hop.intact else "[red]" + ",".join(hop.integrity_failures) + "[/red]"
    strategy = hop.strategy + ("→post" if hop.switched_to_postcopy else "")
    line = (
        f"{mark} hop {hop.index:>{width}}/{planned} {_short(hop.from_host)}→"
        f"{_short(hop.to_host)} {strategy:<18} {times}  {hop.transferred_bytes / MIB:5.1f} MiB  "
        f"{intact}  "
        f"rss {hop.footprint.rss_mib:6.1f} MiB  fds {hop.footprint.open_fds}"
    )
    if hop.error:
        line += f"\n    [red]{escape(hop.error)}[/red]"
    return line


class SoakConsole:
    """Prints the soak's stages and pre-flight findings, then a line per hop (no per-poll
    progress bar: fifty of them would bury the hops)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def stage(self, text: str) -> None:
        self.console.print(f"[cyan]•[/cyan] {escape(text)}", highlight=False)

    def check(self, check: Check) -> None:
        self.console.print(f"  {check.status} {check.name}: {escape(check.message)}")

    def migration_progress(self, elapsed_s: float, stats: MigrationStats) -> None:
        pass

    def hop(self, hop: Hop, planned: int) -> None:
        self.console.print(hop_line(hop, planned), highlight=False, soft_wrap=True)


def _verdict(ok: bool, text: str) -> str:
    return f"[green]{text}[/green]" if ok else f"[red]{text}[/red]"


def soak_table(report: SoakReport) -> Table:
    """The soak's summary: hops, failures, integrity failures, leftovers, vmigrate's RSS and
    open file descriptors at the start and the end."""
    table = Table(title=f"soak: {report.scenario} on testbed {report.testbed}", show_header=False)
    table.add_column("figure")
    table.add_column("value")
    table.add_row(
        "hops", _verdict(report.failures == 0, f"{report.hops_moved}/{report.hops_planned}")
    )
    table.add_row("by strategy (moved/made)", _by_strategy(report))
    table.add_row("failures", _verdict(report.failures == 0, str(report.failures)))
    table.add_row(
        "integrity failures",
        _verdict(report.integrity_failures == 0, str(report.integrity_failures)),
    )
    table.add_row(
        "leftovers",
        _verdict(not report.leftovers, "; ".join(report.leftovers) or "none"),
    )
    _footprint_rows(table, report)
    _time_rows(table, report)
    if report.error:
        table.add_row("error", f"[red]{escape(report.error)}[/red]")
    table.add_row("verdict", _verdict(report.ok, "pass" if report.ok else "FAIL"))
    return table


def _footprint_rows(table: Table, report: SoakReport) -> None:
    """vmigrate's RSS and open file descriptors: start, end, growth, peak, after teardown."""
    start, end, growth = report.start, report.end, report.rss_growth_mib
    if start is not None and end is not None and growth is not None:
        per_hop_kib = growth * 1024 / len(report.hops)
        peak = max(hop.footprint.rss_mib for hop in report.hops)
        table.add_row(
            "vmigrate RSS",
            f"start {start.rss_mib:.1f} MiB, end {end.rss_mib:.1f} MiB, growth {growth:+.1f} "
            f"MiB ({per_hop_kib:+.0f} KiB/hop), peak {peak:.1f} MiB",
        )
        table.add_row("vmigrate open fds", f"start {start.open_fds}, end {end.open_fds}")
    if report.after_teardown is not None:
        after = report.after_teardown
        table.add_row("after teardown", f"RSS {after.rss_mib:.1f} MiB, open fds {after.open_fds}")


def _time_rows(table: Table, report: SoakReport) -> None:
    """Median and worst migration time and reported downtime over the hops that moved."""
    total = sorted(h.total_time_s for h in report.hops if h.total_time_s is not None)
    down = sorted(h.downtime_ms for h in report.hops if h.downtime_ms is not None)
    if total:
        table.add_row(
            "migration time", f"median {total[len(total) // 2]:.2f} s, max {total[-1]:.2f} s"
        )
    if down:
        table.add_row(
            "downtime (reported)", f"median {down[len(down) // 2]:.1f} ms, max {down[-1]:.1f} ms"
        )


def _by_strategy(report: SoakReport) -> str:
    """Per strategy made: hops that moved the VM of those made (and how many switched to
    post-copy, where any did)."""
    parts = []
    for strategy in report.strategies:
        hops = [hop for hop in report.hops if hop.strategy == strategy]
        if not hops:
            continue
        switched = sum(hop.switched_to_postcopy for hop in hops)
        part = f"{strategy} {sum(hop.moved for hop in hops)}/{len(hops)}"
        parts.append(part + (f" ({switched} post-copy)" if switched else ""))
    return ", ".join(parts)
