"""Where each VM goes, decided before the drain starts: one small function per placement, in
a registry (PLACEMENTS), over the receiving hosts that have the memory and the CPU for it.

A VM takes its full memory_mib on the destination from the start of its migration; it runs on
a host whose CPU model is its own, or newer by the cluster's cpu_generations. The planner does
not ask QEMU which features a model has (`vmigrate preflight` does, for one migration).
When a VM fits nowhere, NoRoom says which VM and why each receiving host refused it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vmigrate.drain.cluster import Cluster, Host, Vm
from vmigrate.errors import ClusterError

MIB = 1024 * 1024
SHOWN_REFUSALS = 3


class NoRoom(Exception):
    """No receiving host can take `vm` (reasons: why each one refused it)."""

    def __init__(self, vm: Vm, reasons: list[str]) -> None:
        self.vm = vm
        self.reasons = reasons
        super().__init__(vm.name)


def runs_on(host: Host, cpu_model: str, generations: Sequence[str]) -> bool:
    """Whether `host` can run a guest with `cpu_model` (empty on either side: not checked)."""
    if not host.cpu_model or not cpu_model or host.cpu_model == cpu_model:
        return True
    if host.cpu_model in generations and cpu_model in generations:
        return generations.index(cpu_model) <= generations.index(host.cpu_model)
    return False


@dataclass
class Receivers:
    """The receiving hosts as the placement fills them."""

    hosts: list[Host]
    free_mib: list[int] = field(init=False)
    link_mib_s: list[float] = field(init=False)
    incoming_s: list[float] = field(init=False)  # MiB placed / link rate: its link's busy time
    cursor: int = 0
    cpu_ok: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.free_mib = [host.free_memory_mib for host in self.hosts]
        self.link_mib_s = [host.link_mbit * 1e6 / 8 / MIB for host in self.hosts]
        self.incoming_s = [0.0] * len(self.hosts)

    def fitting(self, vm: Vm, generations: Sequence[str]) -> list[int]:
        """The receiving hosts (indices) with the CPU and the free memory for `vm`."""
        if vm.cpu_model not in self.cpu_ok:
            self.cpu_ok[vm.cpu_model] = [
                i for i, host in enumerate(self.hosts) if runs_on(host, vm.cpu_model, generations)
            ]
        return [i for i in self.cpu_ok[vm.cpu_model] if self.free_mib[i] >= vm.memory_mib]

    def refusals(self, vm: Vm, generations: Sequence[str]) -> list[str]:
        """Why each receiving host cannot take `vm`."""
        return [
            f"{host.name} runs {host.cpu_model}"
            if not runs_on(host, vm.cpu_model, generations)
            else f"{host.name} has {self.free_mib[i]} of its {host.free_memory_mib} MiB left"
            for i, host in enumerate(self.hosts)
        ]

    def take(self, i: int, vm: Vm) -> None:
        self.free_mib[i] -= vm.memory_mib
        self.incoming_s[i] += vm.touched_mib / self.link_mib_s[i]


def _round_robin(receivers: Receivers, fitting: list[int], _vm: Vm) -> int:
    """The next host in turn that fits, after the one chosen last."""
    n = len(receivers.hosts)
    chosen = min(fitting, key=lambda i: (i - receivers.cursor) % n)
    receivers.cursor = (chosen + 1) % n
    return chosen


def _least_loaded(receivers: Receivers, fitting: list[int], _vm: Vm) -> int:
    """The host with the most free memory left."""
    return max(fitting, key=lambda i: (receivers.free_mib[i], -i))


def _balanced_links(receivers: Receivers, fitting: list[int], vm: Vm) -> int:
    """The host whose link would be busy the shortest with this VM's bytes on top."""
    busy, rate = receivers.incoming_s, receivers.link_mib_s
    return min(fitting, key=lambda i: (busy[i] + vm.touched_mib / rate[i], i))


Choose = Callable[[Receivers, list[int], Vm], int]
#: name → (how to choose among the hosts that fit, whether to place the largest VMs first)
PLACEMENTS: dict[str, tuple[Choose, bool]] = {
    "round-robin": (_round_robin, False),
    "least-loaded": (_least_loaded, False),
    "balanced-links": (_balanced_links, True),
}
PLANNER_PLACEMENT = "balanced-links"


def place(cluster: Cluster, vms: Sequence[Vm], order: Sequence[int], placement: str) -> list[str]:
    """The destination of every VM (by index), placed in `order` (or largest first).

    :raise NoRoom: for the first VM no receiving host can take.
    """
    choose, largest_first = PLACEMENTS[placement]
    hosts = [host for host in cluster.hosts if host.role == "receive"]
    receivers = Receivers(hosts)
    sequence = sorted(order, key=lambda i: -vms[i].memory_mib) if largest_first else order
    destination = [""] * len(vms)
    for i in sequence:
        fitting = receivers.fitting(vms[i], cluster.cpu_generations)
        if not fitting:
            raise NoRoom(vms[i], receivers.refusals(vms[i], cluster.cpu_generations))
        chosen = choose(receivers, fitting, vms[i])
        receivers.take(chosen, vms[i])
        destination[i] = hosts[chosen].name
    return destination


def no_room_error(
    cluster: Cluster, vms: Sequence[Vm], room: NoRoom, placement: str
) -> ClusterError:
    """The one line for a VM that fits nowhere: which, why, and what would fit."""
    vm = room.vm
    shown = "; ".join(room.reasons[:SHOWN_REFUSALS])
    if len(room.reasons) > SHOWN_REFUSALS:
        shown += f"; {len(room.reasons) - SHOWN_REFUSALS} more"
    others = [name for name in PLACEMENTS if name != placement and _fits(cluster, vms, name)]
    need = sum(v.memory_mib for v in vms)
    free = sum(h.free_memory_mib for h in cluster.hosts if h.role == "receive")
    fix = (
        f"placement = '{others[0]}' fits them all"
        if others
        else f"free memory or add receiving hosts (the VMs need {need} MiB, the receiving "
        f"hosts have {free} MiB free)"
    )
    return ClusterError(
        f"vm {vm.name} ({vm.memory_mib} MiB, CPU {vm.cpu_model or 'any'}) fits on no receiving "
        f"host with placement {placement} ({shown}): {fix}"
    )


def _fits(cluster: Cluster, vms: Sequence[Vm], placement: str) -> bool:
    try:
        place(cluster, vms, range(len(vms)), placement)
    except NoRoom:
        return False
    return True
