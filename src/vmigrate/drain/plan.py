"""The drain's plan: the policy as planned, and per VM when it starts and ends, its pause, its
outage and its bytes, whether it converges, and the fix when it does not — as models
(`vmigrate plan --json` writes them), built from one simulated drain (planner.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, Field, computed_field

from vmigrate.drain.cluster import Choice, Cluster, Policy
from vmigrate.drain.order import ORDERS, PLANNER_ORDER
from vmigrate.drain.placement import PLANNER_PLACEMENT, NoRoom, no_room_error, place
from vmigrate.drain.planner import (
    MIB,
    Job,
    Trace,
    VmOutcome,
    alone_estimate,
    prepare,
    simulate,
)
from vmigrate.migration.estimate import PHYSICS, Estimate, ModelConstants, postcopy_estimate


class VmPlan(BaseModel):
    """One VM's migration as the plan predicts it (times since the drain started)."""

    name: str
    source: str
    destination: str
    strategy: str
    outcome: VmOutcome
    start_s: float | None = Field(
        description="its stream's start, its destination prepared (the model's setup_ms after "
        "its release); None: not started"
    )
    end_s: float | None = Field(description="done (or cancelled, when it stalls)")
    downtime_ms: float | None = Field(description="the VM paused: the stop, the switch-over")
    outage_ms: float | None = Field(
        description="downtime; with post-copy also the pull, while its pages come over"
    )
    transferred_bytes: float = Field(description="everything sent, cancelled passes included")
    passes: int | None = Field(description="pre-copy passes before the stop")
    fix: str = Field("", description="what would make it converge")
    over_bounds: list[str] = Field([], description="the policy's bounds it overruns")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def converges(self) -> bool:
        """Whether it reaches the destination under this plan."""
        return self.outcome == VmOutcome.MIGRATES


class Plan(BaseModel):
    """The drain, predicted."""

    cluster: str
    policy: Choice
    calibrated_runs: int = Field(
        description="runs the model's constants were fitted to; 0: physics"
    )
    total_time_s: float = Field(
        description="from the first release to the last end, and its wrap-up (wrapup_ms)"
    )
    transferred_bytes: float
    searched: int = Field(0, description="candidates the search simulated; 0: the policy as given")
    vms: list[VmPlan]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def complete(self) -> bool:
        """Every VM reaches its destination."""
        return all(vm.converges for vm in self.vms)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def respects_bounds(self) -> bool:
        """No VM overruns the policy's downtime or outage bound."""
        return not any(vm.over_bounds for vm in self.vms)


def never_fix(postcopy: Estimate, dirty_bytes_s: float, stream_bytes_s: float) -> str:
    """The fix for a pre-copy that cannot converge: post-copy (its estimate), or auto-converge
    throttling the vCPUs until the guest dirties less than the link carries."""
    fix = "strategy = 'postcopy'"
    if postcopy.total_time_s is not None and postcopy.downtime_ms is not None:
        fix += f" ({postcopy.total_time_s:.1f} s, {postcopy.downtime_ms:.0f} ms pause)"
    throttle_pct = math.ceil((1 - stream_bytes_s / dirty_bytes_s) * 100) if dirty_bytes_s else 0
    if throttle_pct <= 99:  # QEMU throttles at most 99 %
        fix += f", or auto-converge with the vCPUs throttled to ≥ {throttle_pct} %"
    return fix


def stall_fix(alone: Estimate, postcopy: Estimate) -> str:
    """The fix for a pre-copy that stalls on a shared link but converges alone."""
    fix = "a later slot"
    if alone.total_time_s is not None and alone.downtime_ms is not None:
        fix += f" (alone: {alone.total_time_s:.1f} s, {alone.downtime_ms:.0f} ms pause)"
    fix += ", fewer migrations at once on its links"
    if postcopy.total_time_s is not None:
        fix += f", or strategy = 'postcopy' ({postcopy.total_time_s:.1f} s alone)"
    return fix


def as_planned(policy: Policy) -> Choice:
    """The policy with what it leaves to the planner filled in with the planner's heuristics."""
    return Choice(
        order=PLANNER_ORDER if policy.order == "planner" else policy.order,
        placement=PLANNER_PLACEMENT if policy.placement == "planner" else policy.placement,
        parallel_per_host=policy.parallel_per_host,
        parallel_total=policy.parallel_total,
    )


def arrange(job: Job, choice: Choice) -> tuple[list[int], list[str]]:
    """The start order and every VM's destination under `choice`.

    :raise ClusterError: when a VM fits on no receiving host (naming it, and why).
    """
    order = ORDERS[choice.order](job.vms, job.alone_s)
    try:
        return order, place(job.cluster, job.vms, order, choice.placement)
    except NoRoom as room:
        raise no_room_error(job.cluster, job.vms, room, choice.placement) from None


def plan(cluster: Cluster, constants: ModelConstants = PHYSICS) -> Plan:
    """The drain under the cluster's policy, predicted.

    :raise ClusterError: when a VM fits on no receiving host.
    """
    job = prepare(cluster, constants)
    choice = as_planned(cluster.policy)
    order, destination = arrange(job, choice)
    return build_plan(job, choice, destination, simulate(job, choice, order, destination))


def plan_placed(
    cluster: Cluster, destinations: Mapping[str, str], constants: ModelConstants = PHYSICS
) -> Plan:
    """The drain under the cluster's policy with every VM's destination given (by name), not
    placed by the policy: a plan with another's placement (a drain whose guests, measured, no
    longer pack the way their declared sizes did)."""
    job = prepare(cluster, constants)
    choice = as_planned(cluster.policy)
    order = ORDERS[choice.order](job.vms, job.alone_s)
    destination = [destinations[vm.name] for vm in job.vms]
    return build_plan(job, choice, destination, simulate(job, choice, order, destination))


def build_plan(
    job: Job, choice: Choice, destination: Sequence[str], trace: Trace, searched: int = 0
) -> Plan:
    """The plan's models from one simulated drain, with fixes and the bounds it overruns."""
    vms = [_vm_plan(job, i, destination[i], trace) for i in range(len(job.vms))]
    vms.sort(key=lambda vm: (vm.start_s is None, vm.start_s or 0.0))
    return Plan(
        cluster=job.cluster.name,
        policy=choice,
        calibrated_runs=job.constants.fitted_runs,
        total_time_s=trace.total_time_s,
        transferred_bytes=sum(trace.sent_bytes),
        searched=searched,
        vms=vms,
    )


def _vm_plan(job: Job, i: int, destination: str, trace: Trace) -> VmPlan:
    vm = job.vms[i]
    outcome = trace.outcome[i]
    paused = trace.paused_s[i]
    downtime_ms = None if paused is None else paused * 1000
    outage_ms = None if paused is None else (paused + trace.pull_s[i]) * 1000
    return VmPlan(
        name=vm.name, source=vm.host, destination=destination, strategy=vm.strategy,
        outcome=outcome, start_s=trace.start_s[i], end_s=trace.end_s[i],
        downtime_ms=downtime_ms, outage_ms=outage_ms, transferred_bytes=trace.sent_bytes[i],
        passes=trace.passes[i], fix=_fix(job, i, destination, outcome),
        over_bounds=over_bounds(job.cluster.policy, downtime_ms, outage_ms),
    )  # fmt: skip


def _fix(job: Job, i: int, destination: str, outcome: VmOutcome) -> str:
    """What would make VM i converge, from the model alone on its links."""
    if outcome == VmOutcome.MIGRATES:
        return ""
    vm = job.vms[i]
    ends = (job.host_index[vm.host], job.host_index[destination])
    link_bytes_s = min(job.hosts[end].link_mbit for end in ends) * 1e6 / 8
    postcopy = postcopy_estimate(vm.touched_mib * MIB, link_bytes_s, job.constants)
    if outcome == VmOutcome.STALLS:
        return stall_fix(alone_estimate(vm, link_bytes_s, job.constants), postcopy)
    stream = min(job.stream_bytes_s[end] for end in ends)
    return never_fix(postcopy, job.dirty_bytes_s[i], stream)


def over_bounds(policy: Policy, downtime_ms: float | None, outage_ms: float | None) -> list[str]:
    """The policy's bounds a VM's predicted pause and outage overrun."""
    bounds = (
        ("downtime", downtime_ms, "max_downtime_ms", policy.max_downtime_ms),
        ("outage", outage_ms, "max_outage_ms", policy.max_outage_ms),
    )
    return [
        f"{what} {value:.0f} ms > {key} {bound:g}"
        for what, value, key, bound in bounds
        if value is not None and bound is not None and value > bound
    ]
