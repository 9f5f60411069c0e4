"""The drain file: groups expand into full scenarios (NAME-GROUP-K, guests 1, 2, ...), [base]
under each group's keys; the receiving hosts and their capacity; and every bad input is one
line naming the key, with exit code 2, before anything is created (a guest that fits on no
receiving host is named by the planner, with each host's reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmigrate.drain.drain_file import MAX_DRAIN_GUESTS, load_drain, validate_drain
from vmigrate.drain.inputs import check_fits, cluster_for, declared_inputs, measured
from vmigrate.errors import ClusterError, DrainError, UsageError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "drain.toml"
MACHINE_MIB = 8192


def small(**changes: Any) -> dict[str, Any]:
    """A small drain: two groups on the source of a 3-host testbed, and `changes` over it."""
    data: dict[str, Any] = {
        "name": "d",
        "testbed": {"hypervisors": 3},
        "base": {"vm": {"accel": "tcg", "memory_mib": 256}, "phases": {"after_s": 2}},
        "groups": [
            {"name": "web", "count": 2, "workload": {"kind": "web"}},
            {
                "name": "mem",
                "vm": {"memory_mib": 384},
                "workload": {"kind": "memory", "dirty_rate_mib_s": 10, "working_set_mib": 64},
            },
        ],
        "policy": {"parallel_per_host": 2},
    }
    data.update(changes)
    return data


def test_the_example_expands_into_four_full_scenarios() -> None:
    drain = load_drain(EXAMPLE, machine_mib=MACHINE_MIB)
    assert [(g.name, g.index, g.group) for g in drain.guests] == [
        ("drain-idle-1", 1, "idle"), ("drain-web-1", 2, "web"), ("drain-web-2", 3, "web"),
        ("drain-dirty-1", 4, "dirty"),
    ]  # fmt: skip
    assert (drain.host, drain.receivers) == ("source", ["destination", "hv3"])
    assert drain.capacity_mib == {"destination": 1024, "hv3": 1024}
    for guest in drain.guests:
        scenario = guest.scenario
        assert scenario.name == guest.name and scenario.testbed.hypervisors == 3
        assert scenario.vm.accel == "tcg" and scenario.network.bandwidth_mbit == 400
        assert scenario.load.rate_rps == 20 and scenario.phases.after_s == 3
    dirty = drain.guest("drain-dirty-1").scenario
    assert (dirty.vm.memory_mib, dirty.workload.kind, dirty.workload.dirty_rate_mib_s) == (
        384, "memory", 10,
    )  # fmt: skip
    assert drain.guest("drain-idle-1").scenario.workload.kind == "idle"
    assert check_fits(drain).complete


def test_group_keys_go_over_the_bases_key_by_key() -> None:
    drain = validate_drain(small(), machine_mib=MACHINE_MIB)
    web, mem = drain.guest("d-web-1").scenario, drain.guest("d-mem-1").scenario
    assert web.vm.memory_mib == 256 and mem.vm.memory_mib == 384
    assert web.vm.accel == mem.vm.accel == "tcg"  # the base's key beside the group's
    assert [g.index for g in drain.guests] == [1, 2, 3]


def test_receivers_default_to_every_other_hypervisor_host_and_share_the_machine() -> None:
    drain = validate_drain(small(testbed={"hypervisors": 4}), machine_mib=4096)
    assert drain.receivers == ["destination", "hv3", "hv4"]
    # 4096 MiB available, the guests take 256 + 256 + 384: the rest shared by three hosts
    assert drain.capacity_mib == dict.fromkeys(drain.receivers, (4096 - 896) // 3)
    given = small(drain={"host": "hv3", "free_memory_mib": {"source": 500}})
    drain = validate_drain(given, machine_mib=4096)
    assert drain.host == "hv3" and drain.receivers == ["source", "destination"]
    assert drain.capacity_mib == {"source": 500, "destination": (4096 - 896) // 2}


def test_overrides_change_the_drain_file(tmp_path: Path) -> None:
    drain = load_drain(
        EXAMPLE, ["policy.parallel_per_host=1", "base.phases.after_s=1"], machine_mib=MACHINE_MIB
    )
    assert drain.spec.policy.parallel_per_host == 1
    assert all(g.scenario.phases.after_s == 1 for g in drain.guests)


def test_the_planners_cluster_has_the_guests_and_the_measured_inputs() -> None:
    drain = validate_drain(small(), machine_mib=MACHINE_MIB)
    inputs = declared_inputs(drain)
    assert inputs.guests["d-mem-1"].dirty_rate_mib_s == 10
    assert inputs.guests["d-web-1"].dirty_rate_mib_s == 0
    cluster = cluster_for(drain, inputs)
    assert [(h.name, h.role) for h in cluster.hosts] == [
        ("source", "drain"), ("destination", "receive"), ("hv3", "receive"),
    ]  # fmt: skip
    assert {h.link_mbit for h in cluster.hosts} == {1000}
    vms = cluster.machines()
    assert [vm.name for vm in vms] == ["d-web-1", "d-web-2", "d-mem-1"]
    assert vms[2].touched_mib == 384 and vms[2].downtime_limit_ms == 300
    guest = drain.guest("d-web-1")
    seen = measured(guest, 40 * 1024 * 1024 + 1, None, 0.5)
    assert (seen.touched_mib, seen.dirty_rate_mib_s, seen.measured) == (41, 0.5, True)
    assert seen.data_mib is None and seen.model_mib == 41  # data not sampled: the touched
    assert measured(guest, None, None, -1).touched_mib == 256  # unknown: all of it
    assert measured(guest, 10**12, None, 0).touched_mib == 256  # never more than its memory
    # the memory holding data is what the planner sends
    held = measured(guest, 40 * 1024 * 1024, 30 * 1024 * 1024, 0.5)
    assert (held.touched_mib, held.data_mib, held.model_mib) == (40, 30, 30)
    assert cluster_for(drain, inputs.model_copy(update={"guests": {**inputs.guests,
        "d-web-1": held}})).machines()[0].touched_mib == 30  # fmt: skip


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown drained host", {"drain": {"host": "hv9"}},
     "drain.host: unknown host 'hv9'; this testbed's hypervisor hosts are source, destination, "
     "hv3"),
    ("storage is no hypervisor", {"drain": {"receivers": ["storage"]}},
     "drain.receivers: unknown host 'storage'"),
    ("receiver drained", {"drain": {"receivers": ["destination", "source"]}},
     "drain.receivers: source is the host being drained"),
    ("no receiver", {"drain": {"receivers": []}}, "drain.receivers: empty"),
    ("receiver twice", {"drain": {"receivers": ["hv3", "hv3"]}}, "listed twice"),
    ("capacity of a non-receiver", {"drain": {"free_memory_mib": {"source": 10}}},
     "drain.free_memory_mib: 'source' is not a receiving host"),
    ("parallel 0", {"policy": {"parallel_per_host": 0}},
     "policy.parallel_per_host = 0 would never start a migration; use 1 or more"),
    ("parallel total 0", {"policy": {"parallel_total": 0}}, "policy.parallel_total = 0"),
    ("unknown order", {"policy": {"order": "random"}}, "policy.order: 'random' is not allowed"),
    ("unknown drain key", {"drain": {"hosts": "x"}},
     "drain.hosts: unknown key 'hosts'; allowed: host, receivers, free_memory_mib, search"),
    ("unknown top key", {"guests": []}, "unknown key 'guests'"),
    ("too many guests", {"groups": [{"name": "g", "count": MAX_DRAIN_GUESTS + 1}]},
     "groups[0] (g).count: must be less than or equal to 27"),
    ("too many in all", {"groups": [{"name": "a", "count": 20}, {"name": "b", "count": 8}]},
     "groups: 28 guests; a testbed has addresses for 27 guests"),
    ("group twice", {"groups": [{"name": "a"}, {"name": "a"}]}, "groups: a named twice"),
    ("group key", {"groups": [{"name": "a", "network": {}}]},
     "groups[0] (a).network: unknown key 'network'; allowed: name, count, vm, workload, load, "
     "migration"),
    ("no groups", {"groups": []}, "groups: List should have at least 1 item"),
    ("base name", {"base": {"name": "x"}}, "base.name: not a [base] key in a drain"),
    ("base testbed", {"base": {"testbed": {"hypervisors": 3}}}, "base.testbed: not a [base] key"),
    ("hypervisors", {"testbed": {"hypervisors": 9}}, "testbed.hypervisors: 9 is out of range"),
    ("scenario key", {"groups": [{"name": "a", "vm": {"memory": 1}}]},
     "guest d-a-1: vm.memory: unknown key 'memory'"),
    ("cold", {"base": {"migration": {"strategy": "cold"}}},
     "migration.strategy = 'cold': the drain's planner models precopy and postcopy only"),
    ("tls", {"base": {"migration": {"tls": True}}}, "TLS is not supported in a drain yet"),
    ("fault", {"base": {"fault": {"kind": "cancel"}}}, "fault: faults are not injected"),
    ("cap", {"base": {"migration": {"max_bandwidth_mib_s": 10}}},
     "migration.max_bandwidth_mib_s: the planner shares the links"),
    ("ceiling", {"base": {"hosts": {"source_cpu": "Westmere"}}}, "CPU ceilings per host"),
    ("long name", {"name": "n" * 40, "groups": [{"name": "g" * 30}]}, "is longer than 64"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "changes", "says"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_with_exit_code_2(
    what: str, changes: dict[str, Any], says: str
) -> None:
    with pytest.raises(UsageError) as caught:
        validate_drain(small(**changes), "d.toml", machine_mib=MACHINE_MIB)
    message = str(caught.value)
    assert says in message, message
    assert "\n" not in message and message.startswith("d.toml")
    assert caught.value.exit_code == 2


def test_guests_that_do_not_fit_the_receivers_are_named_by_the_planner() -> None:
    data = small(drain={"free_memory_mib": {"destination": 300, "hv3": 300}})
    drain = validate_drain(data, "d.toml", machine_mib=MACHINE_MIB)
    with pytest.raises(ClusterError) as caught:
        check_fits(drain)
    message = str(caught.value)
    assert message.startswith("d.toml: vm d-mem-1 (384 MiB")
    assert "fits on no receiving host" in message and "destination has 300" in message
    assert "\n" not in message and caught.value.exit_code == 2


def test_a_machine_without_the_memory_leaves_no_room() -> None:
    drain = validate_drain(small(), "d.toml", machine_mib=1000)  # the guests take 896
    assert drain.capacity_mib == {"destination": 52, "hv3": 52}
    with pytest.raises(ClusterError, match="fits on no receiving host"):
        check_fits(drain)


def test_a_file_that_is_not_there_or_not_toml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DrainError, match="no such drain file"):
        load_drain(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(DrainError, match="not valid TOML"):
        load_drain(bad)
