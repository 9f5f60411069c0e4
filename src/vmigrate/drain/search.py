"""The search for the policy that drains soonest: every combination of the orders and the
placements the policy leaves to the planner and of the parallelisms per host up to the
policy's (1, 2, 3, 4, then doubling), each simulated; then, for the best, smaller cluster-wide
caps (a receiving link shared by fewer may serve each better). The winner is the one where the
most VMs converge, then the fewest overrun the bounds, then the soonest done, then the least
parallel (a busy host costs its guests too).

It is a search over the simulation, not an optimiser: it finds the best of these candidates,
not the best schedule there is (VM by VM placement and timing are left to the heuristics).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import get_args

from vmigrate.drain.cluster import Choice, Cluster, ConcreteOrder, ConcretePlacement
from vmigrate.drain.order import ORDERS
from vmigrate.drain.placement import NoRoom, no_room_error, place
from vmigrate.drain.plan import Plan, build_plan, over_bounds
from vmigrate.drain.planner import Job, Trace, VmOutcome, prepare, simulate
from vmigrate.migration.estimate import PHYSICS, ModelConstants

Score = tuple[int, int, float, int, float]


def ladder(top: int) -> list[int]:
    """1, 2, 3, 4, then doubling, up to and including `top`."""
    steps = [k for k in (1, 2, 3, 4) if k < top]
    while steps and steps[-1] * 2 < top:
        steps.append(steps[-1] * 2)
    return [*steps, top]


def score(job: Job, choice: Choice, trace: Trace) -> Score:
    """Lower is better: VMs that do not converge, VMs over the bounds, time, parallelism."""
    policy = job.cluster.policy
    unconverged = sum(outcome != VmOutcome.MIGRATES for outcome in trace.outcome)
    over = 0
    if policy.max_downtime_ms is not None or policy.max_outage_ms is not None:
        for paused, pull in zip(trace.paused_s, trace.pull_s, strict=True):
            if paused is not None and over_bounds(policy, paused * 1000, (paused + pull) * 1000):
                over += 1
    total = math.inf if choice.parallel_total is None else choice.parallel_total
    return unconverged, over, round(trace.total_time_s, 6), choice.parallel_per_host, total


@dataclass
class _Search:
    """Candidates tried so far, their arrangements cached (placing costs as much as a run)."""

    job: Job
    arrangements: dict[tuple[str, str], tuple[list[int], list[str]] | NoRoom] = field(
        default_factory=dict
    )
    tried: int = 0
    best: tuple[Score, Choice, list[str], Trace] | None = None

    def arrangement(self, choice: Choice) -> tuple[list[int], list[str]] | NoRoom:
        """The start order and destinations, or which VM fits nowhere."""
        key = (choice.order, choice.placement)
        if key not in self.arrangements:
            job = self.job
            order = ORDERS[choice.order](job.vms, job.alone_s)
            try:
                self.arrangements[key] = order, place(job.cluster, job.vms, order, key[1])
            except NoRoom as room:
                self.arrangements[key] = room
        return self.arrangements[key]

    def consider(self, choice: Choice) -> None:
        """Simulate `choice`; keep it if it is the best so far."""
        arranged = self.arrangement(choice)
        if isinstance(arranged, NoRoom):
            return
        order, destination = arranged
        trace = simulate(self.job, choice, order, destination)
        self.tried += 1
        candidate = (score(self.job, choice, trace), choice, destination, trace)
        if self.best is None or candidate[0] < self.best[0]:
            self.best = candidate


def _choices(job: Job) -> Iterator[Choice]:
    """Every order, placement and parallelism per host, as far as the policy leaves them open."""
    policy = job.cluster.policy
    orders: tuple[ConcreteOrder, ...] = (
        get_args(ConcreteOrder) if policy.order == "planner" else (policy.order,)
    )
    placements: tuple[ConcretePlacement, ...] = (
        get_args(ConcretePlacement) if policy.placement == "planner" else (policy.placement,)
    )
    busiest = max(Counter(vm.host for vm in job.vms).values())
    for order in orders:
        for placement in placements:
            for k in ladder(min(policy.parallel_per_host, busiest)):
                yield Choice(
                    order=order, placement=placement, parallel_per_host=k,
                    parallel_total=policy.parallel_total,
                )  # fmt: skip


def search(cluster: Cluster, constants: ModelConstants = PHYSICS) -> Plan:
    """The plan of the candidate that drains soonest within the bounds (see the module).

    :raise ClusterError: when the VMs fit the receiving hosts under no placement tried.
    """
    job = prepare(cluster, constants)
    state = _Search(job)
    for choice in _choices(job):
        state.consider(choice)
    if state.best is None:  # no placement fits: say which VM, where, under the first tried
        (_, placement), room = next(iter(state.arrangements.items()))
        assert isinstance(room, NoRoom)
        raise no_room_error(cluster, job.vms, room, placement)
    best = state.best[1]
    senders = len({vm.host for vm in job.vms})
    for total in ladder(best.parallel_total or senders * best.parallel_per_host)[:-1]:
        state.consider(best.model_copy(update={"parallel_total": total}))
    _, choice, destination, trace = state.best
    return build_plan(job, choice, destination, trace, searched=state.tried)
