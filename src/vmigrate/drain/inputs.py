"""What the drain's planner is told: each guest's size, touched memory and dirty rate, and the
links' rate — declared (from the drain file, to check before anything boots that the guests
fit the receiving hosts) or measured (from the running guests, to plan the drain itself).

The measured inputs are what a pre-flight estimate measures (migration/estimate_check.py):
the memory the guest has touched and, of it, the memory holding data (untouched pages and
pages of zeros go as zero pages, next to free), and its dirty rate, each guest in turn (two
measurements at once would disturb each other), and the link once (every uplink of the
testbed is shaped alike).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from vmigrate.drain.cluster import Cluster, Host, VmGroup
from vmigrate.drain.drain_file import Drain, Guest
from vmigrate.drain.plan import Plan, VmPlan, plan, plan_placed
from vmigrate.drain.search import search
from vmigrate.errors import ClusterError, HypervisorError
from vmigrate.hypervisor.base import Domain
from vmigrate.measure.link import measure_link_bytes_s
from vmigrate.migration.estimate import EXTRA_SYNCS, PHYSICS, ModelConstants, memory_to_send
from vmigrate.migration.estimate_check import DIRTY_RATE_SECONDS
from vmigrate.migration.preflight import Check
from vmigrate.testbed.testbed import Testbed

log = logging.getLogger(__name__)
MIB = 1024 * 1024
DIRTY_RATE_S = DIRTY_RATE_SECONDS


class GuestInputs(BaseModel):
    """One guest, as the planner sees it."""

    model_config = ConfigDict(frozen=True)

    memory_mib: int = Field(gt=0, description="its RAM: the room it takes on a receiving host")
    touched_mib: int = Field(ge=0, description="memory it has touched")
    data_mib: int | None = Field(
        None, ge=0, description="of it, memory holding data: what pass 0 sends (None: unknown)"
    )
    dirty_rate_mib_s: float = Field(ge=0, description="how fast it dirties its memory")
    measured: bool = Field(description="measured on the running guest (false: declared)")

    @property
    def model_mib(self) -> int:
        """M, what the model sends: the memory holding data when known, else the touched."""
        return self.touched_mib if self.data_mib is None else self.data_mib


class PlannerInputs(BaseModel):
    """Everything the plan was made from."""

    model_config = ConfigDict(frozen=True)

    link_mbit_s: float = Field(gt=0, description="every host's uplink, each way")
    link_measured: bool = Field(description="measured between the hosts (false: configured)")
    guests: dict[str, GuestInputs] = Field(description="by guest name")


def declared(guest: Guest) -> GuestInputs:
    """A guest as its scenario describes it: all its memory touched, the memory workload's
    dirty rate (other workloads: none)."""
    vm, workload = guest.scenario.vm, guest.scenario.workload
    rate = workload.dirty_rate_mib_s if workload.kind == "memory" else 0.0
    return GuestInputs(
        memory_mib=vm.memory_mib, touched_mib=vm.memory_mib, dirty_rate_mib_s=rate, measured=False
    )


def declared_inputs(drain: Drain) -> PlannerInputs:
    """The drain as its file describes it, links at network.bandwidth_mbit."""
    return PlannerInputs(
        link_mbit_s=drain.base.network.bandwidth_mbit,
        link_measured=False,
        guests={guest.name: declared(guest) for guest in drain.guests},
    )


def measured(
    guest: Guest, touched_bytes: int | None, data_bytes: int | None, dirty_rate_mib_s: float
) -> GuestInputs:
    """A guest as measured: its touched memory (None or 0: unknown, all of it), the memory
    holding data (None: unknown) and its dirty rate."""
    memory_mib = guest.scenario.vm.memory_mib
    ram = memory_mib * MIB
    data_mib = (
        None if data_bytes is None else math.ceil(memory_to_send(ram, None, data_bytes) / MIB)
    )
    return GuestInputs(
        memory_mib=memory_mib,
        touched_mib=math.ceil(memory_to_send(ram, touched_bytes, None) / MIB),
        data_mib=data_mib,
        dirty_rate_mib_s=max(dirty_rate_mib_s, 0.0),
        measured=True,
    )


def cluster_for(drain: Drain, inputs: PlannerInputs, names: list[str] | None = None) -> Cluster:
    """The drain as a cluster file: the drained host, the receiving hosts with their capacity,
    one VM per guest (`names`: only these guests; default all), the file's policy."""
    link = inputs.link_mbit_s
    hosts = [Host(name=drain.host, role="drain", link_mbit=link)] + [
        Host(name=name, role="receive", link_mbit=link, free_memory_mib=drain.capacity_mib[name])
        for name in drain.receivers
    ]
    chosen = set(names) if names is not None else None
    vms = [_vm(guest, inputs.guests[guest.name], drain.host) for guest in drain.guests
           if chosen is None or guest.name in chosen]  # fmt: skip
    return Cluster(name=drain.name, hosts=hosts, vms=vms, policy=drain.spec.policy)


def _vm(guest: Guest, given: GuestInputs, host: str) -> VmGroup:
    migration = guest.scenario.migration
    strategy = "postcopy" if migration.strategy == "postcopy" else "precopy"
    return VmGroup(
        name=guest.name,
        host=host,
        memory_mib=given.memory_mib,
        touched_mib=given.model_mib,
        dirty_rate_mib_s=given.dirty_rate_mib_s,
        downtime_limit_ms=migration.downtime_limit_ms,
        strategy=strategy,
    )


def plan_drain(
    drain: Drain,
    inputs: PlannerInputs,
    constants: ModelConstants = PHYSICS,
    names: list[str] | None = None,
) -> Plan:
    """The drain planned from `inputs` under the file's policy (searched when [drain] search).

    :raise ClusterError: a guest fits on no receiving host (which, where, and why)."""
    cluster = cluster_for(drain, inputs, names)
    try:
        if drain.spec.drain.search:
            return search(cluster, constants)
        return plan(cluster, constants)
    except ClusterError as exc:
        raise ClusterError(f"{drain.origin}: {exc}") from None


def replan(
    drain: Drain,
    inputs: PlannerInputs,
    fallback: Plan,
    constants: ModelConstants = PHYSICS,
    names: list[str] | None = None,
) -> tuple[Plan, str | None]:
    """The drain planned from measured `inputs`; when the measured guests no longer fit the
    way the policy places them, the placement of `fallback` (the plan from the declared
    sizes, which fit) with the measured figures. The plan, and a note when it fell back."""
    try:
        return plan_drain(drain, inputs, constants, names), None
    except ClusterError as exc:
        destinations = {vm.name: vm.destination for vm in fallback.vms}
        cluster = cluster_for(drain, inputs, names)
        note = f"kept the placement of the declared sizes: measured, {exc}"
        return plan_placed(cluster, destinations, constants), note


async def measure_guest(guest: Guest, source: Domain, seconds: int = DIRTY_RATE_S) -> GuestInputs:
    """The guest's touched memory and dirty rate, measured on its running instance (each as
    the pre-flight estimate measures it); what cannot be measured is taken as declared."""
    try:
        touched = await source.touched_memory_bytes()
        data = await source.data_memory_bytes()
        rate = await source.measure_dirty_rate(seconds)
    except HypervisorError as exc:
        log.warning("%s: not measured (%s); planned as declared", guest.name, exc)
        return declared(guest)
    return measured(guest, touched, data, rate)


def measure_link_mbit_s(testbed: Testbed, sender: str, receiver: str) -> float:
    """What a TCP stream from testbed host `sender` to `receiver` carries, Mbit/s."""
    to = testbed.hosts[receiver]
    rate = measure_link_bytes_s(testbed.hosts[sender].netns, to.netns, to.ip)
    return rate * 8 / 1e6


def planned_estimate(
    guest: Guest, planned: VmPlan, inputs: PlannerInputs, calibrated_runs: int
) -> Check:
    """The plan's figures for one guest as a pre-flight "estimate" check, so its own result.json
    sets them beside what happened (its `prediction` section), as a run alone does with its
    estimate. The bandwidth is the share the plan gave it on average (its bytes over its time)."""
    given = inputs.guests[guest.name]
    time_s = None
    if planned.start_s is not None and planned.end_s is not None:
        time_s = round(planned.end_s - planned.start_s, 3)
    share_mib_s = planned.transferred_bytes / MIB / time_s if time_s else None
    figures = {
        "model": planned.strategy,
        "calibrated_runs": calibrated_runs,
        "dirty_rate_mib_s": round(given.dirty_rate_mib_s, 3),
        "link_mbit_s": round(inputs.link_mbit_s, 3),
        "bandwidth_mib_s": None if share_mib_s is None else round(share_mib_s, 3),
        "guest_ram_bytes": given.memory_mib * MIB,
        "touched_memory_bytes": given.touched_mib * MIB,
        "data_memory_bytes": None if given.data_mib is None else given.data_mib * MIB,
        "memory_bytes": given.model_mib * MIB,
        "downtime_limit_ms": guest.scenario.migration.downtime_limit_ms,
        "converges": planned.converges,
        "predicted_passes": planned.passes,
        "predicted_iterations": None if planned.passes is None else planned.passes + EXTRA_SYNCS,
        "predicted_total_time_s": time_s,
        "predicted_downtime_ms": planned.downtime_ms,
        "predicted_transferred_bytes": round(planned.transferred_bytes),
    }
    when = "" if planned.start_s is None else f" from {planned.start_s:.1f} s into the drain"
    return Check(
        "estimate",
        "pass" if planned.converges else "warn",
        f"the drain's plan: {planned.outcome.value}{when}, "
        + (f"{time_s:.1f} s to {planned.destination}" if time_s is not None else "not started"),
        "" if planned.converges else planned.fix,
        figures,
    )


def check_fits(drain: Drain, constants: ModelConstants = PHYSICS) -> Plan:
    """Before anything boots: the plan with the declared sizes, so a guest that fits on no
    receiving host is refused in one line (the planner's: which guest, each host's reason).

    :raise ClusterError: it does not fit."""
    return plan_drain(drain, declared_inputs(drain), constants)


def planned_inputs(values: Mapping[str, GuestInputs], link_mbit_s: float) -> PlannerInputs:
    """Measured inputs as the planner's, the link measured."""
    return PlannerInputs(link_mbit_s=link_mbit_s, link_measured=True, guests=dict(values))
