"""The drain file of `vmigrate drain`: guests booted together on one testbed host, then all
migrated away under a policy, each with the full bill of a single run.

    name = "drain"               the drain; guest K of group G is called NAME-G-K
    [testbed] hypervisors = 3    the testbed's hypervisor hosts: source, destination, hv3, ...
    [base]                       scenario keys every guest shares (network, storage, migration,
                                 phases, load, measure, hosts.backend, vm ...)
    [[groups]]                   name, count, and the group's own vm / workload / load /
                                 migration keys (over [base]'s)
    [drain]                      host (the one drained), receivers, free_memory_mib, search
    [policy]                     as in a cluster file (drain/cluster.py's Policy, the same model)

Read like a scenario: unknown keys are refused, and any problem is one line naming the key
(DrainError), before anything is created. Each guest expands to a full Scenario, validated
like any other. Whether the guests fit on the receiving hosts is the planner's question
(drain/inputs.py asks it with the sizes declared here, before anything boots).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vmigrate.config import Scenario, TestbedSpec, apply_overrides, read_toml, validate_scenario
from vmigrate.drain.cluster import NAME, Policy, describe
from vmigrate.errors import DrainError
from vmigrate.testbed.guests import MAX_GUESTS
from vmigrate.testbed.network import hypervisor_roles

#: Guest 0 is a single run's; a drain's guests are 1, 2, ... (their addresses, MACs, taps).
MAX_DRAIN_GUESTS = MAX_GUESTS - 1
GROUP_SECTIONS = ("vm", "workload", "load", "migration")
#: The strategies the planner models (drain/planner.py); a drain plans every migration.
PLANNED_STRATEGIES = ("precopy", "postcopy")
#: [base] keys a drain sets itself, and what to do instead.
NOT_IN_BASE = {
    "name": "the guests are named NAME-GROUP-K after the top-level name",
    "testbed": "set [testbed] hypervisors at the top level of the drain file",
}
MAX_NAME = 64  # a scenario's name


class _Entry(BaseModel):
    """One table of the file: frozen, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Group(_Entry):
    """`count` alike guests: their scenario is [base] with this group's sections over it."""

    name: str = Field(min_length=1, max_length=32, pattern=NAME, description="group name")
    count: int = Field(1, ge=1, le=MAX_DRAIN_GUESTS, description="how many alike guests")
    vm: dict[str, Any] = Field({}, description="scenario [vm] keys (memory_mib, ...)")
    workload: dict[str, Any] = Field(
        {}, description="scenario [workload] keys (kind, dirty_rate_mib_s, working_set_mib)"
    )
    load: dict[str, Any] = Field({}, description="scenario [load] keys (rate_rps, ...)")
    migration: dict[str, Any] = Field(
        {}, description="scenario [migration] keys (strategy, downtime_limit_ms, ...)"
    )


class DrainSpec(_Entry):
    """Which host is drained, which hosts may receive its guests, and how much they hold."""

    host: str = Field("source", description="the hypervisor host whose guests all leave")
    receivers: list[str] | None = Field(
        None, description="the hosts that may receive them; default: every other hypervisor host"
    )
    free_memory_mib: dict[str, int] = Field(
        {}, description="memory each receiving host holds for incoming guests, by host; a host "
        "not listed gets the machine's available memory, less the guests', shared equally",
    )  # fmt: skip
    search: bool = Field(
        False, description="let the planner search the orders, placements and parallelism the "
        "policy leaves open (as `vmigrate plan --search`), instead of its heuristics",
    )  # fmt: skip


class DrainFile(_Entry):
    """The whole file."""

    name: str = Field("drain", min_length=1, max_length=40, pattern=NAME)
    testbed: TestbedSpec = TestbedSpec()
    base: dict[str, Any] = Field({}, description="scenario keys every guest shares")
    groups: list[Group] = Field(min_length=1, description="the guests, [[groups]] tables")
    drain: DrainSpec = DrainSpec()
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _hosts_exist(self) -> DrainFile:
        roles = hypervisor_roles(self.testbed.hypervisors)
        known = f"this testbed's hypervisor hosts are {', '.join(roles)}"
        host = self.drain.host
        if host not in roles:
            raise ValueError(
                f"drain.host: unknown host {host!r}; {known} (more with [testbed] hypervisors)"
            )
        receivers = self.receivers
        if not receivers:
            raise ValueError("drain.receivers: empty; name at least one host to receive")
        for name in receivers:
            if name == host:
                raise ValueError(
                    f"drain.receivers: {name} is the host being drained; it cannot receive its "
                    "own guests: remove it"
                )
            if name not in roles:
                raise ValueError(
                    f"drain.receivers: unknown host {name!r}; {known} (more with [testbed] "
                    "hypervisors)"
                )
        if len(set(receivers)) != len(receivers):
            raise ValueError("drain.receivers: a host is listed twice; list each once")
        for name, mib in self.drain.free_memory_mib.items():
            if name not in receivers:
                raise ValueError(
                    f"drain.free_memory_mib: {name!r} is not a receiving host "
                    f"({', '.join(receivers)})"
                )
            if mib <= 0:
                raise ValueError(f"drain.free_memory_mib.{name} = {mib}: give it 1 MiB or more")
        return self

    @model_validator(mode="after")
    def _guests_fit_the_testbed(self) -> DrainFile:
        names = [group.name for group in self.groups]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"groups: {', '.join(twice)} named twice; give each group its name")
        total = sum(group.count for group in self.groups)
        if total > MAX_DRAIN_GUESTS:
            raise ValueError(
                f"groups: {total} guests; a testbed has addresses for {MAX_DRAIN_GUESTS} guests "
                f"beside each other: lower the counts to {MAX_DRAIN_GUESTS} in all"
            )
        for group in self.groups:
            longest = f"{self.name}-{group.name}-{group.count}"
            if len(longest) > MAX_NAME:
                raise ValueError(
                    f"groups ({group.name}): guest name {longest!r} is longer than {MAX_NAME} "
                    "characters; shorten the drain's or the group's name"
                )
        for key, fix in NOT_IN_BASE.items():
            if key in self.base:
                raise ValueError(f"base.{key}: not a [base] key in a drain; {fix}")
        return self

    @property
    def receivers(self) -> list[str]:
        """The receiving hosts: as listed, or every hypervisor host but the drained one."""
        if self.drain.receivers is not None:
            return list(self.drain.receivers)
        roles = hypervisor_roles(self.testbed.hypervisors)
        return [role for role in roles if role != self.drain.host]


ENTRIES: dict[str, type[BaseModel]] = {
    "testbed": TestbedSpec, "groups": Group, "drain": DrainSpec, "policy": Policy,
}  # fmt: skip


@dataclass(frozen=True)
class Guest:
    """One guest of the drain: its name, its testbed guest index (address, MAC, tap), its
    group, and its full scenario."""

    name: str
    index: int
    group: str
    scenario: Scenario


@dataclass(frozen=True)
class Drain:
    """A validated drain file: every guest's scenario, the hosts, their capacities."""

    spec: DrainFile
    origin: str
    guests: tuple[Guest, ...]
    capacity_mib: dict[str, int]  # by receiving host

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def host(self) -> str:
        """The host drained."""
        return self.spec.drain.host

    @property
    def receivers(self) -> list[str]:
        return self.spec.receivers

    @property
    def base(self) -> Scenario:
        """What every guest shares (network, storage, phases, backend, ...): the first's."""
        return self.guests[0].scenario

    def guest(self, name: str) -> Guest:
        """The guest called `name`. :raise KeyError: none is."""
        for guest in self.guests:
            if guest.name == name:
                return guest
        raise KeyError(name)


def merged(base: dict[str, Any], group: Group) -> dict[str, Any]:
    """A guest's raw scenario: [base], each of the group's sections over the base's."""
    data = copy.deepcopy(base)
    for section in GROUP_SECTIONS:
        keys = getattr(group, section)
        if not keys:
            continue
        below = data.get(section, {})
        if not isinstance(below, dict):
            raise DrainError(f"base.{section}: must be a table of keys, not {below!r}")
        data[section] = {**below, **keys}
    return data


def unplannable(scenario: Scenario) -> str | None:
    """Why a drain cannot take this guest's scenario (None: it can)."""
    migration, hosts = scenario.migration, scenario.hosts
    if hosts.real:
        return "hosts.source_uri: a drain runs on the testbed; your own hosts are not drained"
    if hosts.source_cpu or hosts.destination_cpu:
        return (
            "hosts.source_cpu / destination_cpu: CPU ceilings per host are not supported in a "
            "drain yet; remove them"
        )
    if migration.strategy not in PLANNED_STRATEGIES:
        return (
            f"migration.strategy = {migration.strategy!r}: the drain's planner models "
            f"{' and '.join(PLANNED_STRATEGIES)} only; use one of them"
        )
    if migration.tls:
        return (
            "migration.tls: TLS is not supported in a drain yet (the guests' libvirt daemons "
            "would need one CA for all); remove it"
        )
    if migration.max_bandwidth_mib_s:
        return (
            "migration.max_bandwidth_mib_s: the planner shares the links, it does not cap each "
            "migration; leave it 0 in a drain"
        )
    if scenario.fault.kind != "none":
        return "fault: faults are not injected in a drain; remove [fault]"
    return None


def expand(spec: DrainFile, origin: str) -> list[Guest]:
    """Every guest, groups expanded in the file's order, guest indices 1, 2, ...

    :raise ScenarioError: a guest's scenario is invalid. :raise DrainError: a drain cannot
        take it."""
    guests: list[Guest] = []
    for group in spec.groups:
        data = merged(spec.base, group)
        for k in range(1, group.count + 1):
            name = f"{spec.name}-{group.name}-{k}"
            where = f"{origin}: guest {name}"
            scenario = validate_scenario(
                {**data, "name": name, "testbed": spec.testbed.model_dump()}, origin=where
            )
            problem = unplannable(scenario)
            if problem is not None:
                raise DrainError(f"{where}: {problem}")
            guests.append(Guest(name, len(guests) + 1, group.name, scenario))
    shared = {g.scenario.hosts.backend for g in guests}
    if len(shared) > 1:  # only [base] sets it; a second value means an unknown way in
        raise DrainError(f"{origin}: hosts.backend differs among guests; set it in [base] only")
    return guests


def available_mib() -> int:
    """The machine's available memory (MemAvailable), MiB; 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def capacities(spec: DrainFile, guests: list[Guest], machine_mib: int) -> dict[str, int]:
    """Memory each receiving host holds for incoming guests: as the file gives it, else the
    machine's available memory less what the guests take once booted, shared equally (every
    host of the testbed lives on this one machine)."""
    given = spec.drain.free_memory_mib
    receivers = spec.receivers
    needed = sum(guest.scenario.vm.memory_mib for guest in guests)
    share = max(machine_mib - needed, 0) // len(receivers)
    return {host: given.get(host, share) for host in receivers}


def validate_drain(
    data: dict[str, Any], origin: str = "drain", machine_mib: int | None = None
) -> Drain:
    """Validate raw drain data and expand its guests. `machine_mib`: the memory available on
    this machine (None: read it).

    :raise DrainError / ScenarioError: one line naming the key."""
    try:
        spec = DrainFile.model_validate(data)
    except ValidationError as exc:
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        line = describe(exc.errors()[0], data, DrainFile, ENTRIES)
        raise DrainError(f"{origin}: {line}{suffix}") from None
    guests = expand(spec, origin)
    machine = available_mib() if machine_mib is None else machine_mib
    return Drain(spec, origin, tuple(guests), capacities(spec, guests, machine))


def load_drain(
    path: Path, overrides: list[str] | None = None, machine_mib: int | None = None
) -> Drain:
    """Read a drain TOML file, apply `--set` overrides (dotted keys of the drain file:
    policy.parallel_per_host=1, base.phases.after_s=2), validate, expand."""
    data = apply_overrides(read_toml(path, "drain", DrainError), overrides or [])
    return validate_drain(data, str(path), machine_mib)
