"""The orders a drain's queue can follow, as a registry (ORDERS): each gives the VMs' indices in
the order they start (within the parallelism the policy allows). Sorts are stable: ties keep
the file's order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vmigrate.drain.cluster import Vm

OrderFn = Callable[[Sequence[Vm], Sequence[float]], list[int]]


def _listed(vms: Sequence[Vm], _alone_s: Sequence[float]) -> list[int]:
    """As the file lists them."""
    return list(range(len(vms)))


def _smallest(vms: Sequence[Vm], _alone_s: Sequence[float]) -> list[int]:
    """Least touched memory first: the most VMs off the host soonest."""
    return sorted(range(len(vms)), key=lambda i: vms[i].touched_mib)


def _least_dirty(vms: Sequence[Vm], _alone_s: Sequence[float]) -> list[int]:
    """Lowest dirty rate first."""
    return sorted(range(len(vms)), key=lambda i: vms[i].dirty_rate_mib_s)


def _longest_first(vms: Sequence[Vm], alone_s: Sequence[float]) -> list[int]:
    """Longest alone first (by the single-migration model at the source's link rate): the
    classic heuristic against one long migration finishing alone at the end."""
    return sorted(range(len(vms)), key=lambda i: -alone_s[i])


ORDERS: dict[str, OrderFn] = {
    "listed": _listed,
    "smallest": _smallest,
    "least-dirty": _least_dirty,
    "longest-first": _longest_first,
}
PLANNER_ORDER = "longest-first"
