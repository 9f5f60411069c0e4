"""A drain's plan in the terminal: one row per VM in the order they start, and a line for the
whole drain."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from vmigrate.drain.plan import Plan, VmPlan
from vmigrate.drain.planner import VmOutcome

MIB = 1024 * 1024
GIB = 1024 * MIB
SHORT = {VmOutcome.MIGRATES: "yes", VmOutcome.STALLS: "stalls", VmOutcome.NEVER: "never"}


def _num(value: float | None, digits: int) -> str:
    return "[dim]—[/dim]" if value is None else f"{value:.{digits}f}"


def _converges(vm: VmPlan) -> str:
    text = "[green]yes[/green]" if vm.converges else f"[red]{SHORT[vm.outcome]}[/red]"
    return text + (" [yellow]over bounds[/yellow]" if vm.over_bounds else "")


def plan_table(plan: Plan) -> Table:
    """Per VM: where from and to, when, its pause, its bytes, whether it converges."""
    policy = plan.policy
    cap = "no cap" if policy.parallel_total is None else f"≤ {policy.parallel_total}"
    table = Table(
        title=f"drain plan {plan.cluster}: order {policy.order}, placement {policy.placement}, "
        f"≤ {policy.parallel_per_host} per host, {cap} in all",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("vm")
    table.add_column("from → to", no_wrap=True)
    table.add_column("strategy")
    for column in ("start\ns", "end\ns", "downtime\nms", "sent\nMiB"):
        table.add_column(column, justify="right")
    table.add_column("converges")
    for vm in plan.vms:
        table.add_row(
            vm.name, f"{vm.source} → {vm.destination}", vm.strategy, _num(vm.start_s, 1),
            _num(vm.end_s, 1), _num(vm.downtime_ms, 0), f"{vm.transferred_bytes / MIB:.0f}",
            _converges(vm),
        )  # fmt: skip
    return table


def plan_notes(plan: Plan) -> list[str]:
    """A line (rich markup) per VM that does not converge or overruns a bound: why, the fix."""
    notes = []
    for vm in plan.vms:
        if vm.fix:
            notes.append(f"  [red]✗[/red] {vm.name} {vm.outcome.value}; fix: {escape(vm.fix)}")
        if vm.over_bounds:
            notes.append(f"  [yellow]![/yellow] {vm.name}: {escape('; '.join(vm.over_bounds))}")
    return notes


def plan_summary(plan: Plan) -> str:
    """The drain in one line (rich markup): how long, how much, what does not go to plan."""
    sources = len({vm.source for vm in plan.vms})
    model = (
        f"model calibrated on {plan.calibrated_runs} runs"
        if plan.calibrated_runs
        else "model: plain physics (`vmigrate calibrate` fits it to your runs)"
    )
    line = (
        f"[bold]drain[/bold]: {len(plan.vms)} VMs off {sources} host"
        f"{'s' if sources != 1 else ''} in {plan.total_time_s:.1f} s, "
        f"{plan.transferred_bytes / GIB:.1f} GiB sent; {model}"
    )
    if plan.searched:
        line += f"; best of {plan.searched} candidates searched"
    unconverged = sum(not vm.converges for vm in plan.vms)
    if unconverged:
        line += f"; [red]{unconverged} will not converge[/red] (see their fix)"
    over = sum(bool(vm.over_bounds) for vm in plan.vms)
    if over:
        line += f"; [yellow]{over} over the policy's bounds[/yellow]"
    return line
