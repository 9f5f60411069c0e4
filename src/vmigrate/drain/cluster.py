"""The cluster file of `vmigrate plan`: the hosts, the VMs of the hosts to drain, the policy.

A TOML file validated by pydantic like a scenario (config.py): unknown keys are refused, and
any problem is one line (ClusterError) naming the entry and the key, saying what to change.
Whether the VMs fit the receiving hosts depends on the placement, so drain/placement.py checks
that, and names the VM that does not fit where.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from vmigrate.config import read_toml
from vmigrate.errors import ClusterError

NAME = r"^[A-Za-z0-9_.-]+$"
ConcreteOrder = Literal["listed", "smallest", "least-dirty", "longest-first"]
ConcretePlacement = Literal["round-robin", "least-loaded", "balanced-links"]
Order = Literal[ConcreteOrder, "planner"]  # planner: its heuristic, or the search's choice
Placement = Literal[ConcretePlacement, "planner"]
PlannedStrategy = Literal["precopy", "postcopy"]


class _Entry(BaseModel):
    """One table of the file: frozen, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(_Entry):
    """A host: one it drains, or one that receives the VMs."""

    name: str = Field(min_length=1, max_length=64, pattern=NAME, description="host name")
    role: Literal["drain", "receive"] = Field(
        description="drain: every VM listed on it leaves; receive: it takes VMs"
    )
    link_mbit: float = Field(gt=0, le=1_000_000, description="its uplink's rate, each way")
    free_memory_mib: int = Field(
        0, ge=0, description="receive hosts: memory free for incoming VMs (what runs there now "
        "is already taken off)",
    )  # fmt: skip
    cpu_model: str = Field(
        "", description="the CPU model it offers (QEMU's name); empty: not checked"
    )


class VmGroup(_Entry):
    """A VM, or `count` alike VMs named NAME-1 … NAME-count."""

    name: str = Field(min_length=1, max_length=64, pattern=NAME, description="VM name")
    host: str = Field(min_length=1, description="the drain host it runs on")
    count: int = Field(1, ge=1, le=100_000, description="how many alike VMs this entry stands for")
    memory_mib: int = Field(gt=0, le=4_194_304, description="guest RAM in MiB (room it needs)")
    touched_mib: int | None = Field(
        None, ge=0, description="memory the guest has touched, which pass 0 sends (untouched "
        "pages go as zero pages, next to free); default: all of memory_mib",
    )  # fmt: skip
    dirty_rate_mib_s: float = Field(
        0, ge=0, le=1_000_000, description="memory dirtied per second (measured or guessed)"
    )
    downtime_limit_ms: int = Field(300, ge=1, le=600_000, description="allowed stop-and-copy")
    strategy: PlannedStrategy = Field(
        "precopy", description="precopy, or postcopy (switch at once, pull the pages)"
    )
    cpu_model: str = Field("", description="the guest's CPU model; empty: its host's")

    @model_validator(mode="after")
    def _touched_fits(self) -> VmGroup:
        if self.touched_mib is not None and self.touched_mib > self.memory_mib:
            raise ValueError(
                f"vm {self.name}: touched_mib = {self.touched_mib} is more than its memory_mib "
                f"= {self.memory_mib}; use at most {self.memory_mib}"
            )
        return self


class Policy(_Entry):
    """How the drain runs: how many at once, in which order, to which hosts; the bounds."""

    parallel_per_host: int = Field(
        1, description="at most this many migrations at once from one host (the search tries "
        "1 … this)",
    )  # fmt: skip
    parallel_total: int | None = Field(
        None, description="at most this many at once in the cluster; absent: no cap"
    )
    order: Order = Field(
        "planner", description="listed, smallest (touched memory), least-dirty, longest-first "
        "(longest alone first), planner (longest-first, or the search's choice)",
    )  # fmt: skip
    placement: Placement = Field(
        "planner", description="round-robin, least-loaded (most free memory), balanced-links "
        "(even the receiving links' bytes), planner (balanced-links, or the search's choice)",
    )  # fmt: skip
    max_downtime_ms: float | None = Field(None, gt=0, description="bound on each VM's pause")
    max_outage_ms: float | None = Field(
        None, gt=0, description="bound on each VM's outage: its pause, and for post-copy also "
        "the pull, while its pages come over the network",
    )  # fmt: skip
    stall_passes: int = Field(
        3, ge=1, le=1000, description="cancel a pre-copy whose passes stopped shrinking this "
        "many times (as migration.on_stall = 'fail')",
    )  # fmt: skip

    @model_validator(mode="after")
    def _parallel_starts_something(self) -> Policy:
        for key in ("parallel_per_host", "parallel_total"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(
                    f"policy.{key} = {value} would never start a migration; use 1 or more "
                    "(1: one at a time)"
                )
        return self


class Choice(BaseModel):
    """The policy as planned: a concrete order and placement, and the parallelism."""

    model_config = ConfigDict(frozen=True)

    order: ConcreteOrder
    placement: ConcretePlacement
    parallel_per_host: int = Field(ge=1)
    parallel_total: int | None = Field(None, ge=1, description="None: no cluster-wide cap")


@dataclass(frozen=True)
class Vm:
    """One VM to move, its group expanded and its defaults filled in."""

    name: str
    host: str
    memory_mib: int
    touched_mib: int
    dirty_rate_mib_s: float
    downtime_limit_ms: int
    strategy: PlannedStrategy
    cpu_model: str


class Cluster(_Entry):
    """The whole file."""

    name: str = Field("cluster", min_length=1, max_length=64, pattern=NAME)
    cpu_generations: list[str] = Field(
        [], description="CPU models, oldest first: a host runs a guest of its own model or an "
        "older one listed here (other models only their own)",
    )  # fmt: skip
    hosts: list[Host] = Field(min_length=2, description="the hosts, [[hosts]] tables")
    vms: list[VmGroup] = Field(min_length=1, description="the VMs to move, [[vms]] tables")
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _hosts_and_vms_agree(self) -> Cluster:
        names = [host.name for host in self.hosts]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"hosts: {', '.join(twice)} listed twice; give each host one entry")
        roles = {host.role for host in self.hosts}
        for role in ("drain", "receive"):
            if role not in roles:
                raise ValueError(f"hosts: no host has role = '{role}'; mark at least one")
        by_name = {host.name: host for host in self.hosts}
        for group in self.vms:
            host = by_name.get(group.host)
            if host is None:
                raise ValueError(
                    f"vm {group.name}: host {group.host!r} is not in [[hosts]] "
                    f"({', '.join(names)}); fix the name or add the host"
                )
            if host.role != "drain":
                raise ValueError(
                    f"vm {group.name}: its host {group.host} receives; list only the VMs of "
                    "the hosts to drain (free_memory_mib already counts the ones that stay)"
                )
        seen: set[str] = set()
        for group in self.vms:
            vm_names = _names(group)
            if seen.intersection(vm_names):
                raise ValueError(f"vm {group.name}: the name is used twice; rename one")
            seen.update(vm_names)
        return self

    def machines(self) -> list[Vm]:
        """Every VM, groups expanded, in the order of the file."""
        cpu = {host.name: host.cpu_model for host in self.hosts}
        return [
            Vm(name, g.host, g.memory_mib,
               g.memory_mib if g.touched_mib is None else g.touched_mib, g.dirty_rate_mib_s,
               g.downtime_limit_ms, g.strategy, g.cpu_model or cpu[g.host])
            for g in self.vms
            for name in _names(g)
        ]  # fmt: skip


def _names(group: VmGroup) -> list[str]:
    if group.count == 1:
        return [group.name]
    return [f"{group.name}-{i}" for i in range(1, group.count + 1)]


ENTRIES: dict[str, type[BaseModel]] = {"hosts": Host, "vms": VmGroup, "policy": Policy}


def _where(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """hosts[1] (h2).link_mbit: the entry by its index and name when it has one."""
    text = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else {}
            name = node.get("name") if isinstance(node, dict) else None
            text += f"[{part}]" + (f" ({name})" if isinstance(name, str) else "")
        else:
            node = node.get(part, {}) if isinstance(node, dict) else {}
            text += f".{part}" if text else part
    return text


def describe(
    error: ErrorDetails,
    data: dict[str, Any],
    root: type[BaseModel] | None = None,
    entries: Mapping[str, type[BaseModel]] | None = None,
) -> str:
    """One line for one pydantic error of a file of entries (`root`: the file's model, default
    Cluster; `entries`: the model of each top-level table): which entry and key, what is wrong,
    what is allowed."""
    loc = error["loc"]
    where = _where(loc, data)
    got = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        top = root or Cluster
        model = (entries or ENTRIES).get(str(loc[0]), top) if len(loc) > 1 else top
        return f"{where}: unknown key {loc[-1]!r}; allowed: {', '.join(model.model_fields)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "").replace("'", "")
        return f"{where}: {got!r} is not allowed; choose one of: {expected.replace(' or ', ', ')}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return f"{where}: missing; add it"
    return f"{where}: {str(error['msg']).replace('Input should be', 'must be')} (got {got!r})"


def validate_cluster(data: dict[str, Any], origin: str = "cluster") -> Cluster:
    """Validate raw cluster data; raise ClusterError with one line naming the bad key."""
    try:
        return Cluster.model_validate(data)
    except ValidationError as exc:
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ClusterError(f"{origin}: {describe(exc.errors()[0], data)}{suffix}") from None


def load_cluster(path: Path) -> Cluster:
    """Read and validate a cluster TOML file."""
    return validate_cluster(read_toml(path, "cluster", ClusterError), origin=str(path))
