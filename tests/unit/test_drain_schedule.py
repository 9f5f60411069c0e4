"""The drain's scheduler with fake lanes on a short clock: the limits per host and in all hold,
the plan's order and placement are followed, a lane that failed or never booted blocks no
other, and the plan's guests come in the order they start (those it never starts last)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmigrate.drain.cluster import Cluster
from vmigrate.drain.plan import plan
from vmigrate.drain.schedule import Limits, Turn, carry_out, startable, turns_of

TICK_S = 0.01


class Clock:
    """What the fake lanes did, and how many ran at once (per host and in all)."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.most_per_host: Counter[str] = Counter()
        self.most_total = 0
        self.released: list[tuple[str, str]] = []  # (name, destination)
        self.ended: list[str] = []


class FakeLane:
    """A lane whose migration takes `ticks`; `fail`: it ends at once; `broken`: waiting on it
    raises."""

    def __init__(
        self, clock: Clock, name: str, source: str, ticks: int = 1, fail: bool = False,
        broken: bool = False,
    ) -> None:  # fmt: skip
        self.clock, self.name, self.source = clock, name, source
        self.ticks, self.fail, self.broken = ticks, fail, broken

    def release(self, destination: str) -> None:
        clock = self.clock
        clock.released.append((self.name, destination))
        clock.running[self.source] += 1
        clock.most_per_host[self.source] = max(
            clock.most_per_host[self.source], clock.running[self.source]
        )
        clock.most_total = max(clock.most_total, sum(clock.running.values()))

    async def wait_ended(self) -> None:
        try:
            if self.broken:
                raise RuntimeError("lost")
            if not self.fail:
                await asyncio.sleep(self.ticks * TICK_S)
        finally:
            self.clock.running[self.source] -= 1
            self.clock.ended.append(self.name)


def turns(*names: str, source: str = "source") -> list[Turn]:
    return [Turn(name, source, f"to-{name}") for name in names]


def lanes_for(clock: Clock, turns: list[Turn], **ticks: int) -> dict[str, FakeLane]:
    return {t.name: FakeLane(clock, t.name, t.source, ticks.get(t.name, 1)) for t in turns}


def test_at_most_k_leave_one_host_in_the_plans_order_to_the_plans_hosts() -> None:
    clock = Clock()
    order = turns("a", "b", "c", "d", "e")
    lanes = lanes_for(clock, order, a=5, b=1, c=1, d=1, e=1)
    released = asyncio.run(carry_out(order, lanes, Limits(per_host=2)))
    assert released == order
    assert clock.released == [(t.name, t.destination) for t in order]
    assert clock.most_per_host["source"] == 2
    assert sorted(clock.ended) == ["a", "b", "c", "d", "e"] and clock.ended[-1] == "a"


def test_the_cap_in_all_holds_across_hosts() -> None:
    clock = Clock()
    a, b = turns("a1", "a2", "a3", source="A"), turns("b1", "b2", "b3", source="B")
    order = [t for pair in zip(a, b, strict=True) for t in pair]
    lanes = lanes_for(clock, order)
    asyncio.run(carry_out(order, lanes, Limits(per_host=2, total=3)))
    assert clock.most_total == 3
    assert max(clock.most_per_host.values()) == 2
    assert len(clock.released) == 6


def test_one_at_a_time_runs_them_one_after_the_other() -> None:
    clock = Clock()
    order = turns("a", "b", "c")
    start = time.monotonic()
    asyncio.run(carry_out(order, lanes_for(clock, order, a=3, b=3, c=3), Limits(per_host=1)))
    assert clock.most_total == 1 and clock.ended == ["a", "b", "c"]
    assert time.monotonic() - start >= 9 * TICK_S


def test_a_busy_host_does_not_hold_back_another_hosts_guests() -> None:
    clock = Clock()
    order = [*turns("a1", "a2", source="A"), *turns("b1", source="B")]
    lanes = lanes_for(clock, order, a1=5, a2=1, b1=1)
    asyncio.run(carry_out(order, lanes, Limits(per_host=1)))
    assert [name for name, _ in clock.released][:2] == ["a1", "b1"]  # b1 did not wait for a2
    assert clock.ended.index("b1") < clock.ended.index("a2")


def test_a_failed_lane_or_one_that_never_booted_blocks_no_other() -> None:
    clock = Clock()
    order = turns("a", "b", "c", "d")
    lanes = lanes_for(clock, order)
    lanes["a"].fail = True  # its migration ends at once (it failed)
    lanes["b"].broken = True  # waiting on it raises
    del lanes["c"]  # it did not boot: the drain has no lane for it
    released = asyncio.run(carry_out(order, lanes, Limits(per_host=1)))
    assert [t.name for t in released] == ["a", "b", "d"]
    assert clock.ended == ["a", "b", "d"] and clock.most_total == 1


def test_cancelling_the_drain_stops_waiting_for_every_lane() -> None:
    clock = Clock()
    order = turns("a", "b", "c")

    async def go() -> None:
        task = asyncio.create_task(
            carry_out(order, lanes_for(clock, order, a=100, b=100, c=100), Limits(2))
        )
        await asyncio.sleep(2 * TICK_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert [name for name, _ in clock.released] == ["a", "b"]  # c was never released
    assert sorted(clock.ended) == ["a", "b"]  # both waits were cancelled and ended


def test_limits_that_allow_nothing_are_refused() -> None:
    with pytest.raises(ValueError, match="let none"):
        asyncio.run(carry_out(turns("a"), lanes_for(Clock(), turns("a")), Limits(0)))


@given(
    st.lists(st.sampled_from("ABC"), min_size=0, max_size=12),
    st.lists(st.sampled_from("ABC"), max_size=6),
    st.integers(1, 4),
    st.none() | st.integers(1, 6),
)
def test_startable_keeps_the_limits_and_each_hosts_order(
    pending_hosts: list[str], running_hosts: list[str], per_host: int, total: int | None
) -> None:
    pending = [Turn(f"p{i}", host, "x") for i, host in enumerate(pending_hosts)]
    running = [Turn(f"r{i}", host, "x") for i, host in enumerate(running_hosts)]
    chosen = startable(pending, running, Limits(per_host, total))
    counts = Counter(t.source for t in running + chosen)
    assert all(
        counts[host] <= max(per_host, Counter(t.source for t in running)[host]) for host in counts
    )
    if total is not None:
        assert len(chosen) <= max(total - len(running), 0)
    for host in "ABC":  # per host, a prefix of its pending turns, in order
        mine = [t for t in pending if t.source == host]
        picked = [t for t in chosen if t.source == host]
        assert picked == mine[: len(picked)]


def test_the_plans_turns_follow_its_start_times_with_the_never_converging_last() -> None:
    cluster = Cluster.model_validate(
        {
            "hosts": [
                {"name": "old", "role": "drain", "link_mbit": 1000},
                {"name": "n1", "role": "receive", "link_mbit": 1000, "free_memory_mib": 8192},
                {"name": "n2", "role": "receive", "link_mbit": 1000, "free_memory_mib": 8192},
            ],
            "vms": [
                {"name": "small", "host": "old", "memory_mib": 256},
                {"name": "hot", "host": "old", "memory_mib": 512, "dirty_rate_mib_s": 500},
                {"name": "big", "host": "old", "memory_mib": 2048},
            ],
            "policy": {"parallel_per_host": 1, "order": "smallest", "placement": "round-robin"},
        }
    )
    planned = plan(cluster)
    got = turns_of(planned)
    assert [t.name for t in got] == ["small", "big", "hot"]
    destinations = {vm.name: vm.destination for vm in planned.vms}
    assert all(t.destination == destinations[t.name] and t.source == "old" for t in got)
    assert {t.destination for t in got} == {"n1", "n2"}
