"""The drain planner: known answers of the physics it simulates (one migration alone is the
single-migration model; links shared fairly), the policy's limits, placement, convergence and
its fixes, the search, and bad cluster files as one line."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmigrate.drain.cluster import Choice, Cluster, ConcreteOrder, ConcretePlacement
from vmigrate.drain.cluster import validate_cluster as validate
from vmigrate.drain.order import ORDERS
from vmigrate.drain.placement import PLACEMENTS
from vmigrate.drain.plan import Plan, VmPlan, plan
from vmigrate.drain.planner import Trace, VmOutcome, prepare
from vmigrate.drain.search import ladder, score, search
from vmigrate.errors import ClusterError
from vmigrate.migration.estimate import (
    PHYSICS,
    ModelConstants,
    postcopy_estimate,
    precopy_estimate,
)

MIB = 1024 * 1024
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LINK_BYTES_S = 100e6  # 800 Mbit/s
CALIBRATED = ModelConstants(
    link_efficiency=0.8, full_page_share=0.9, dirty_rate_factor=1.5, dirty_rate_floor_mib_s=2,
    pass_overhead_ms=15, stop_undershoot_ms=40, switchover_ms=25, device_state_bytes=3 * MIB,
    fitted_runs=12,
)  # fmt: skip


def host(name: str, role: str = "receive", mbit: float = 800, **keys: Any) -> dict[str, Any]:
    free = {"free_memory_mib": 1_000_000} if role == "receive" else {}
    return {"name": name, "role": role, "link_mbit": mbit, **free, **keys}


def vm(name: str, mib: int = 512, dirty: float = 0, on: str = "src", **keys: Any) -> dict[str, Any]:
    return {"name": name, "host": on, "memory_mib": mib, "dirty_rate_mib_s": dirty, **keys}


def cluster(
    vms: list[dict[str, Any]], hosts: list[dict[str, Any]] | None = None, **policy: Any
) -> Cluster:
    hosts = hosts or [host("src", "drain"), host("dst")]
    return validate({"hosts": hosts, "vms": vms, "policy": policy})


def by_name(planned: Plan) -> dict[str, VmPlan]:
    return {item.name: item for item in planned.vms}


# One migration alone: the single-migration model, to the byte.


@pytest.mark.parametrize("constants", [PHYSICS, CALIBRATED], ids=["physics", "calibrated"])
def test_one_precopy_alone_is_the_single_migration_model(constants: ModelConstants) -> None:
    planned = plan(cluster([vm("v", 512, dirty=20, touched_mib=400)]), constants)
    model = precopy_estimate(400 * MIB, 20 * MIB, LINK_BYTES_S, 300, constants)
    (got,) = planned.vms
    assert model.converges and got.converges and model.passes and model.passes > 1
    assert got.passes == model.passes
    assert got.end_s == pytest.approx(model.total_time_s)
    assert got.downtime_ms == pytest.approx(model.downtime_ms)
    assert got.transferred_bytes == pytest.approx(model.transferred_bytes)
    assert planned.total_time_s == pytest.approx(model.total_time_s)


def test_a_guest_dirtying_more_than_the_budget_per_pass_pauses_for_about_its_limit() -> None:
    # 20 MiB/s over 100 MB/s: passes far larger than the 30 MB budget; QEMU stops mid-pass.
    (got,) = plan(cluster([vm("v", 2048, dirty=20, downtime_limit_ms=300)])).vms
    assert got.passes and got.passes > 2 and got.downtime_ms is not None
    assert 300 - PHYSICS.stop_undershoot_ms < got.downtime_ms <= 300


@pytest.mark.parametrize("constants", [PHYSICS, CALIBRATED], ids=["physics", "calibrated"])
def test_one_postcopy_alone_is_the_post_copy_model(constants: ModelConstants) -> None:
    planned = plan(cluster([vm("v", 1024, dirty=500, strategy="postcopy")]), constants)
    model = postcopy_estimate(1024 * MIB, LINK_BYTES_S, constants)
    (got,) = planned.vms
    assert got.end_s == pytest.approx(model.total_time_s)
    assert got.downtime_ms == pytest.approx(model.downtime_ms)
    assert got.transferred_bytes == pytest.approx(model.transferred_bytes)
    assert got.outage_ms == pytest.approx(model.total_time_s * 1000)  # its pages come over


# Links shared: an equal share per migration on each end, the smaller of the two.


def test_two_at_once_on_one_link_each_get_half_and_are_no_faster_than_one_after_another() -> None:
    alone_s = 500 * MIB / LINK_BYTES_S
    vms = [vm("a", 500), vm("b", 500)]
    together = plan(cluster(vms, parallel_per_host=2))
    in_turn = plan(cluster(vms, parallel_per_host=1))
    assert [(v.start_s, v.end_s) for v in together.vms] == [
        (0, pytest.approx(2 * alone_s)),
        (0, pytest.approx(2 * alone_s)),
    ]
    assert [(v.start_s, v.end_s) for v in in_turn.vms] == [
        (0, pytest.approx(alone_s)),
        (pytest.approx(alone_s), pytest.approx(2 * alone_s)),
    ]
    assert together.total_time_s == pytest.approx(in_turn.total_time_s)


def test_a_migration_holds_its_slot_not_the_link_while_prepared_and_wrapped_up() -> None:
    around = ModelConstants(setup_ms=200, wrapup_ms=100)
    alone_s = 500 * MIB / LINK_BYTES_S
    vms = [vm("a", 500), vm("b", 500)]
    in_turn = plan(cluster(vms, parallel_per_host=1), around)
    # a: prepared 0.2 s, sends; seen ended 0.1 s later; then b is released.
    assert [(v.start_s, v.end_s) for v in in_turn.vms] == [
        (pytest.approx(0.2), pytest.approx(0.2 + alone_s)),
        (pytest.approx(0.5 + alone_s), pytest.approx(0.5 + 2 * alone_s)),
    ]
    assert in_turn.total_time_s == pytest.approx(0.6 + 2 * alone_s)
    together = plan(cluster(vms, parallel_per_host=2), around)
    assert [(v.start_s, v.end_s) for v in together.vms] == [
        (pytest.approx(0.2), pytest.approx(0.2 + 2 * alone_s)),
    ] * 2
    assert together.total_time_s == pytest.approx(0.3 + 2 * alone_s)


def test_guests_that_dirty_make_sharing_a_link_slower_and_costlier() -> None:
    vms = [vm("a", 512, dirty=15), vm("b", 512, dirty=15)]
    together = plan(cluster(vms, parallel_per_host=2))
    in_turn = plan(cluster(vms, parallel_per_host=1))
    assert together.complete and in_turn.complete
    assert together.total_time_s > in_turn.total_time_s
    assert together.transferred_bytes > in_turn.transferred_bytes  # more re-sent pages


def test_a_migration_gets_the_whole_link_once_its_neighbour_ends() -> None:
    planned = by_name(plan(cluster([vm("a", 200), vm("b", 600)], parallel_per_host=2)))
    assert planned["a"].end_s == pytest.approx(400 * MIB / LINK_BYTES_S)  # half of the link
    assert planned["b"].end_s == pytest.approx(800 * MIB / LINK_BYTES_S)  # then all of it


def test_the_receiving_link_is_shared_too() -> None:
    hosts = [host("s1", "drain"), host("s2", "drain"), host("dst")]
    vms = [vm("a", 500, on="s1"), vm("b", 500, on="s2")]
    planned = plan(cluster(vms, hosts))
    assert [v.end_s for v in planned.vms] == [pytest.approx(2 * 500 * MIB / LINK_BYTES_S)] * 2
    hosts[2]["link_mbit"] = 1600  # now each gets its whole sending link
    assert plan(cluster(vms, hosts)).total_time_s == pytest.approx(500 * MIB / LINK_BYTES_S)


def test_a_fast_sender_gains_from_parallel_migrations_to_slow_receivers() -> None:
    hosts = [host("src", "drain", 1600), host("r1"), host("r2")]
    vms = [vm("a", 500), vm("b", 500)]
    together = plan(cluster(vms, hosts, parallel_per_host=2))
    in_turn = plan(cluster(vms, hosts, parallel_per_host=1))
    assert {v.destination for v in together.vms} == {"r1", "r2"}
    assert together.total_time_s == pytest.approx(500 * MIB / LINK_BYTES_S)
    assert in_turn.total_time_s == pytest.approx(2 * 500 * MIB / LINK_BYTES_S)


# Convergence, and the fix when there is none.


def test_a_vm_that_dirties_faster_than_its_link_never_converges_and_gets_a_fix() -> None:
    planned = plan(cluster([vm("hot", 1024, dirty=120), vm("calm", 512, dirty=5)]))
    hot, calm = by_name(planned)["hot"], by_name(planned)["calm"]
    assert hot.outcome == VmOutcome.NEVER and not hot.converges
    assert hot.start_s is None and hot.transferred_bytes == 0
    assert "strategy = 'postcopy' (10.7 s" in hot.fix
    assert "auto-converge with the vCPUs throttled to ≥ 21 %" in hot.fix  # 1 - 95.4 / 120
    assert calm.converges and calm.start_s == 0  # the other VM does not wait for it
    assert not planned.complete


def test_a_vm_that_stalls_beside_another_is_cancelled_and_told_to_take_a_later_slot() -> None:
    vms = [vm("a", 512, dirty=60), vm("b", 512, dirty=60)]  # converge alone, not on half a link
    planned = plan(cluster(vms, parallel_per_host=2))
    outcomes = sorted(v.outcome for v in planned.vms)
    assert outcomes == [VmOutcome.MIGRATES, VmOutcome.STALLS]
    stalled = next(v for v in planned.vms if v.outcome == VmOutcome.STALLS)
    assert stalled.fix.startswith("a later slot (alone: ")
    assert stalled.downtime_ms is None and stalled.transferred_bytes > 512 * MIB
    assert plan(cluster(vms, parallel_per_host=1)).complete


def test_bounds_overrun_are_named() -> None:
    planned = plan(cluster([vm("p", 1024, strategy="postcopy"), vm("q", 256)], max_outage_ms=5000))
    assert by_name(planned)["p"].over_bounds == ["outage 10737 ms > max_outage_ms 5000"]
    assert by_name(planned)["q"].over_bounds == []
    assert not planned.respects_bounds


# The policy: parallelism, order, placement.


def overlapping(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at once (an end and a start at the same time do not overlap)."""
    edges = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def random_cluster(seed: int, **policy: Any) -> Cluster:
    rng = random.Random(seed)
    hosts = [host(f"s{i}", "drain", rng.choice([800, 1600])) for i in range(3)]
    hosts += [host(f"r{i}", "receive", rng.choice([800, 4000])) for i in range(2)]
    vms = [
        vm(f"v{i}", rng.choice([256, 512, 1024]), round(rng.uniform(0, 40), 1), f"s{i % 3}",
           strategy=rng.choice(["precopy", "precopy", "postcopy"]))
        for i in range(12)
    ]  # fmt: skip
    return cluster(vms, hosts, **policy)


@given(
    st.integers(0, 10_000), st.integers(1, 3), st.one_of(st.none(), st.integers(1, 5)),
    st.sampled_from(get_args(ConcreteOrder)), st.sampled_from(get_args(ConcretePlacement)),
)  # fmt: skip
@settings(max_examples=40, deadline=None)
def test_every_drain_keeps_the_limits_and_the_links_rates(
    seed: int, per_host: int, total: int | None, order: str, placement: str
) -> None:
    policy = {"parallel_per_host": per_host, "order": order, "placement": placement}
    the_cluster = random_cluster(seed, **policy, **({"parallel_total": total} if total else {}))
    planned = plan(the_cluster)
    started = [v for v in planned.vms if v.start_s is not None and v.end_s is not None]
    spans = {v.name: (v.start_s or 0.0, v.end_s or 0.0) for v in started}
    assert overlapping(list(spans.values())) <= (total or 99)
    for source in ("s0", "s1", "s2"):
        assert overlapping([spans[v.name] for v in started if v.source == source]) <= per_host
    for link in the_cluster.hosts:  # no link carries more than its rate
        sent = sum(
            v.transferred_bytes for v in planned.vms if link.name in (v.source, v.destination)
        )
        assert sent <= link.link_mbit * 1e6 / 8 * planned.total_time_s * (1 + 1e-9)
    touched = {machine.name: machine.touched_mib * MIB for machine in the_cluster.machines()}
    for v in planned.vms:  # every page goes at least once
        assert v.transferred_bytes >= touched[v.name] * (1 - 1e-9) or not v.converges


def test_the_orders_start_what_they_say_first() -> None:
    vms = [vm("big", 2048, dirty=1), vm("small", 256, dirty=30), vm("mid", 1024, dirty=10)]
    first = {
        order: plan(cluster(vms, order=order)).vms[0].name
        for order in ("listed", "smallest", "least-dirty", "longest-first")
    }
    assert first == {
        "listed": "big", "smallest": "small", "least-dirty": "big", "longest-first": "big",
    }  # fmt: skip
    assert [v.name for v in plan(cluster(vms, order="least-dirty")).vms] == ["big", "mid", "small"]


def test_the_registries_offer_what_the_file_allows() -> None:
    assert tuple(ORDERS) == get_args(ConcreteOrder)
    assert tuple(PLACEMENTS) == get_args(ConcretePlacement)


@pytest.mark.parametrize("placement", get_args(ConcretePlacement))
def test_placement_respects_free_memory_and_cpu_models(placement: str) -> None:
    hosts = [
        host("src", "drain", cpu_model="Skylake-Client"),
        host("old", free_memory_mib=6000, cpu_model="Westmere"),
        host("new", free_memory_mib=12000, cpu_model="Icelake-Server"),
    ]
    vms = [vm(f"w{i}", 2000, cpu_model="Westmere") for i in range(3)]
    vms += [vm(f"s{i}", 2000) for i in range(3)]  # the host's Skylake-Client
    generations = ["Westmere", "Skylake-Client", "Icelake-Server"]
    data = {"hosts": hosts, "vms": vms, "policy": {"placement": placement}}
    planned = plan(validate({**data, "cpu_generations": generations}))
    placed = {v.name: v.destination for v in planned.vms}
    assert all(placed[f"s{i}"] == "new" for i in range(3))  # Westmere cannot run Skylake
    for name, free in (("old", 6000), ("new", 12000)):
        assert sum(2000 for where in placed.values() if where == name) <= free


def test_a_vm_that_fits_nowhere_is_named_with_each_hosts_refusal() -> None:
    hosts = [host("src", "drain"), host("a", free_memory_mib=3500), host("b", free_memory_mib=2000)]
    the_cluster = cluster([vm("x", 1000), vm("y", 1000), vm("big", 3000)], hosts,
                          order="listed", placement="round-robin")  # fmt: skip
    with pytest.raises(ClusterError) as caught:
        plan(the_cluster)
    assert str(caught.value) == (
        "vm big (3000 MiB, CPU any) fits on no receiving host with placement round-robin "
        "(a has 2500 of its 3500 MiB left; b has 1000 of its 2000 MiB left): "
        "placement = 'balanced-links' fits them all"
    )
    hosts[1]["free_memory_mib"] = 2000
    with pytest.raises(ClusterError, match=r"vm big \(3000 MiB, CPU any\) fits on no receiving "
                       r"host .*: free memory or add receiving hosts \(the VMs need 5000 MiB, "
                       r"the receiving hosts have 4000 MiB free\)"):  # fmt: skip
        search(cluster([vm("x", 1000), vm("y", 1000), vm("big", 3000)], hosts))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"policy": {"parallel_per_host": 0}},
         "policy.parallel_per_host = 0 would never start a migration; use 1 or more"),
        ({"policy": {"parallel_total": 0}},
         "policy.parallel_total = 0 would never start a migration; use 1 or more"),
        ({"vms": [vm("v", on="nowhere")]},
         "vm v: host 'nowhere' is not in [[hosts]] (src, dst); fix the name or add the host"),
        ({"vms": [vm("v", on="dst")]}, "vm v: its host dst receives; list only the VMs of"),
        ({"vms": [vm("v", 512, touched_mib=600)]},
         "vm v: touched_mib = 600 is more than its memory_mib = 512; use at most 512"),
        ({"vms": [vm("web", count=2), vm("web-2")]}, "vm web-2: the name is used twice"),
        ({"hosts": [host("src", "drain"), host("dst", "drain")]},
         "hosts: no host has role = 'receive'; mark at least one"),
        ({"vms": [{**vm("v"), "dirty_rte_mib_s": 3}]},
         "vms[0] (v).dirty_rte_mib_s: unknown key 'dirty_rte_mib_s'; allowed: name, host"),
        ({"hosts": [host("src", "drain", -1), host("dst")]},
         "hosts[0] (src).link_mbit: must be greater than 0 (got -1)"),
        ({"policy": {"order": "biggest"}},
         "policy.order: 'biggest' is not allowed; choose one of: listed, smallest, least-dirty, "
         "longest-first, planner"),
    ],
)  # fmt: skip
def test_bad_cluster_files_say_what_is_wrong_in_one_line(
    change: dict[str, Any], needle: str
) -> None:
    data = {"hosts": [host("src", "drain"), host("dst")], "vms": [vm("v")], **change}
    with pytest.raises(ClusterError) as caught:
        validate(data, "c.toml")
    assert str(caught.value).startswith("c.toml: ")
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


# The search.


def test_ladder_climbs_to_its_top() -> None:
    assert ladder(1) == [1]
    assert ladder(4) == [1, 2, 3, 4]
    assert ladder(20) == [1, 2, 3, 4, 8, 16, 20]


def test_the_search_moves_dirty_guests_one_at_a_time_on_a_shared_link() -> None:
    vms = [vm(f"v{i}", 512, dirty=15) for i in range(4)]
    found = search(cluster(vms, parallel_per_host=4))
    assert found.policy.parallel_per_host == 1
    assert found.searched >= 4 * 3 * 4
    assert found.total_time_s < plan(cluster(vms, parallel_per_host=4)).total_time_s


def test_the_search_keeps_what_the_policy_fixed() -> None:
    found = search(random_cluster(1, order="listed", placement="least-loaded", parallel_per_host=2))
    assert (found.policy.order, found.policy.placement) == ("listed", "least-loaded")
    assert found.searched >= 2  # per host 1, 2; then smaller caps for the best


@pytest.mark.parametrize("seed", range(6))
def test_the_search_does_at_least_as_well_as_the_policy(seed: int) -> None:
    the_cluster = random_cluster(seed, parallel_per_host=3, max_downtime_ms=250)

    def key(planned: Plan) -> tuple[int, int, float]:
        unconverged = sum(not v.converges for v in planned.vms)
        over = sum(bool(v.over_bounds) for v in planned.vms)
        return unconverged, over, planned.total_time_s - 1e-6

    assert key(search(the_cluster)) <= key(plan(the_cluster))


def test_within_the_bounds_beats_sooner() -> None:
    the_cluster = cluster([vm("v")], max_downtime_ms=100)
    job = prepare(the_cluster)
    choice = Choice(order="listed", placement="round-robin", parallel_per_host=1)
    sooner, within = Trace.empty(1), Trace.empty(1)
    for trace, end, paused in ((sooner, 5.0, 0.3), (within, 9.0, 0.05)):
        trace.outcome[0], trace.end_s[0], trace.paused_s[0] = VmOutcome.MIGRATES, end, paused
    assert score(job, choice, within) < score(job, choice, sooner)
    never = Trace.empty(1)
    assert score(job, choice, sooner) < score(job, choice, never)


# The command.


def vmigrate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VMIGRATE_MODEL": str(cwd / "no-model.json")}  # the plain physics
    return subprocess.run(
        [sys.executable, "-m", "vmigrate", *args],
        capture_output=True, text=True, cwd=cwd, timeout=60, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("parallel_per_host = 2", "parallel_per_host = 0"),
         "policy.parallel_per_host = 0 would never start a migration; use 1 or more"),
        (('host = "old-1"\nmemory_mib = 1024', 'host = "old-9"\nmemory_mib = 1024'),
         "vm build: host 'old-9' is not in [[hosts]] (old-1, new-1, new-2)"),
        (("free_memory_mib = 24576", "free_memory_mib = 2048"),
         "fits on no receiving host with placement balanced-links"),
    ],
)  # fmt: skip
def test_plan_of_a_bad_cluster_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, edit: tuple[str, str], needle: str
) -> None:
    text = (EXAMPLES / "cluster.toml").read_text()
    assert edit[0] in text
    (tmp_path / "bad.toml").write_text(text.replace(*edit))
    done = vmigrate("plan", "bad.toml", "--json", "plan.json", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_plan_of_the_example_names_the_vm_that_will_not_converge(tmp_path: Path) -> None:
    done = vmigrate(
        "plan", str(EXAMPLES / "cluster.toml"), "--search", "--json", "plan.json", cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr  # one VM will not converge
    assert "cache never-converges; fix: strategy = 'postcopy'" in done.stdout
    assert "best of" in done.stdout
    written = Plan.model_validate_json((tmp_path / "plan.json").read_text())
    assert not written.complete and written.searched > 0
    assert sum(not v.converges for v in written.vms) == 1
