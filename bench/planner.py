"""The drain planner's speed (issue 12: 1,000 VMs on 50 hosts in under 1 s): a seeded cluster
of 20 hosts to drain (50 VMs each, 1-16 GiB, dirty rates mostly low, a few hot, some post-copy)
and 30 receiving hosts, on 10 and 25 Gbit/s links; plan() under its policy and the search
timed, then plan() on smaller and larger clusters of the same kind. Nothing runs but Python."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from rich.table import Table

from bench.console import bench_console
from vmigrate.drain.cluster import Cluster, validate_cluster
from vmigrate.drain.plan import Plan, plan
from vmigrate.drain.search import search
from vmigrate.migration.estimate import ModelConstants
from vmigrate.migration.estimate_check import load_constants

SEED = 12
REPEATS = 5
GOAL_S = 1.0


def make_cluster(vms: int = 1000, hosts: int = 50, seed: int = SEED) -> dict[str, Any]:
    """A cluster file's data: 40 % of the hosts drained, the VMs spread evenly over them."""
    rng = random.Random(seed)
    drained = max(1, hosts * 2 // 5)
    host_list = [
        {"name": f"old-{i:03}", "role": "drain", "link_mbit": rng.choice([10_000, 25_000])}
        for i in range(drained)
    ]
    room_mib = vms * 8192 * 2 // (hosts - drained)  # twice the mean VM's size, spread
    host_list += [
        {"name": f"new-{i:03}", "role": "receive", "link_mbit": rng.choice([10_000, 25_000]),
         "free_memory_mib": room_mib}
        for i in range(hosts - drained)
    ]  # fmt: skip
    vm_list = []
    for i in range(vms):
        memory = rng.choice([1024, 2048, 4096, 8192, 16384])
        hot = rng.random() < 0.02  # a few dirty faster than a 10 Gbit/s link carries
        dirty = rng.uniform(1300, 2000) if hot else rng.expovariate(1 / 60)
        vm_list.append({
            "name": f"vm-{i:05}", "host": f"old-{i % drained:03}", "memory_mib": memory,
            "touched_mib": int(memory * rng.uniform(0.3, 1.0)),
            "dirty_rate_mib_s": round(dirty, 1),
            "strategy": "postcopy" if rng.random() < 0.05 else "precopy",
        })  # fmt: skip
    policy = {"parallel_per_host": 4, "parallel_total": 40, "max_downtime_ms": 500}
    return {"name": f"bench-{vms}", "hosts": host_list, "vms": vm_list, "policy": policy}


def timed(action: Callable[[], Plan], repeats: int) -> tuple[list[float], Plan]:
    """Wall times of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    assert result is not None
    return times, result


def _row(table: Table, what: str, times: list[float], planned: Plan) -> None:
    policy = planned.policy
    unconverged = sum(not vm.converges for vm in planned.vms)
    over = sum(bool(vm.over_bounds) for vm in planned.vms)
    table.add_row(
        what, f"{statistics.median(times):.3f}", f"{min(times):.3f}", str(planned.searched or 1),
        f"{policy.order}/{policy.placement}, {policy.parallel_per_host}/host, "
        f"≤{policy.parallel_total or '∞'}",
        f"{planned.total_time_s:.0f}", f"{unconverged} / {over}",
    )  # fmt: skip


def main() -> None:
    console = bench_console()
    constants: ModelConstants = load_constants()
    started = time.perf_counter()
    cluster: Cluster = validate_cluster(make_cluster())
    load_s = time.perf_counter() - started
    table = Table(
        title=f"drain planner: 1,000 VMs on 50 hosts (seed {SEED}; reading the cluster "
        f"{load_s:.3f} s; model: {constants.fitted_runs or 'no'} calibrated runs)"
    )
    for column in ("step", "median s", "min s", "tried", "policy planned", "drain s"):
        table.add_column(
            column, justify="left" if column in ("step", "policy planned") else "right"
        )
    table.add_column("unconverged / over bounds", justify="right")
    plan_times, planned = timed(lambda: plan(cluster, constants), REPEATS)
    _row(table, "plan() 1,000 VMs", plan_times, planned)
    search_times, found = timed(lambda: search(cluster, constants), 1)
    _row(table, "search() 1,000 VMs", search_times, found)
    for vms, hosts in ((250, 50), (4000, 200)):
        other = validate_cluster(make_cluster(vms, hosts))
        times, result = timed(lambda other=other: plan(other, constants), 3)
        _row(table, f"plan() {vms:,} VMs, {hosts} hosts", times, result)
    console.print(table)
    median = statistics.median(plan_times)
    verdict = "[green]met[/green]" if median < GOAL_S else "[red]missed[/red]"
    console.print(
        f"plan() of 1,000 VMs on 50 hosts: {median:.3f} s (goal < {GOAL_S:.0f} s: {verdict})"
    )


if __name__ == "__main__":
    main()
