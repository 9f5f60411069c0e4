"""Scenario validation: defaults, overrides, and one clear line for every kind of bad input."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmigrate.config import (
    STRATEGIES,
    Scenario,
    apply_overrides,
    load_scenario,
    parse_override,
    scenario_to_dict,
    validate_scenario,
)
from vmigrate.errors import ScenarioError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_defaults_match_the_documented_ones() -> None:
    s = Scenario()
    assert (s.vm.memory_mib, s.vm.vcpus, s.vm.cpu_model, s.vm.accel) == (512, 1, "qemu64", "auto")
    assert (s.workload.kind, s.workload.dirty_rate_mib_s, s.workload.working_set_mib) == (
        "web",
        0,
        64,
    )
    assert (s.vm.machine, s.vm.disk_cache) == ("q35", "none")
    assert (s.hosts.source_cpu, s.hosts.destination_cpu) == ("", "")
    assert s.network.bandwidth_mbit == 1000
    assert s.storage.mode == "shared-nfs"
    m = s.migration
    assert (m.strategy, m.max_bandwidth_mib_s, m.downtime_limit_ms, m.timeout_s) == (
        "precopy",
        0,
        300,
        120,
    )
    assert (s.phases.warmup_s, s.phases.baseline_s, s.phases.after_s) == (3, 5, 5)
    assert s.testbed.hypervisors == 2


SCENARIOS = [  # not the sweeps (a matrix), the planner's clusters (VMs) nor drains (groups)
    p
    for p in sorted(EXAMPLES.glob("*.toml"))
    if not {"matrix", "vms", "groups"} & tomllib.loads(p.read_text()).keys()
]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_example_scenario_is_valid(path: Path) -> None:
    assert load_scenario(path).name


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"vm": {"foo": 1}}, "vm.foo: unknown key 'foo'; allowed keys in [vm]: memory_mib, vcpus"),
        ({"vm": {"memory_mib": -5}}, "vm.memory_mib: must be greater than 0 (got -5)"),
        (
            {"migration": {"strategy": "prcopy"}},
            "migration.strategy: 'prcopy' is not allowed; choose one of: precopy, postcopy, "
            "hybrid, auto-converge, xbzrle, multifd, cold",
        ),
        ({"nework": {}}, "nework: unknown key 'nework'; allowed keys in the top level: name, vm"),
        (
            {"workload": {"kind": "memory", "working_set_mib": 400}},
            "workload.working_set_mib: 400 MiB does not fit a 512 MiB guest; use at most 256",
        ),
    ],
)
def test_bad_input_gives_one_line_naming_key_and_allowed_values(
    data: dict[str, object], expected: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        validate_scenario(data, "s.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"s.toml: {expected}")
    assert info.value.exit_code == 2


def test_overrides_are_typed_and_validated() -> None:
    data = apply_overrides(
        {"vm": {"memory_mib": 256}}, ["vm.memory_mib=1024", "migration.strategy=cold"]
    )
    s = validate_scenario(data)
    assert s.vm.memory_mib == 1024
    assert s.migration.strategy == "cold"
    with pytest.raises(ScenarioError, match="vm.memory_mib: must be greater than 0"):
        validate_scenario(apply_overrides({}, ["vm.memory_mib=0"]))


def test_overrides_do_not_mutate_their_input() -> None:
    original = {"vm": {"memory_mib": 256}}
    apply_overrides(original, ["vm.memory_mib=1024"])
    assert original == {"vm": {"memory_mib": 256}}


@pytest.mark.parametrize("text", ["vm.memory_mib", "=3", "vm..x=1", "vm.memory_mib="])
def test_malformed_override_is_refused(text: str) -> None:
    with pytest.raises(ScenarioError, match="expected section.key=value"):
        parse_override(text)


def test_override_through_a_value_is_refused() -> None:
    with pytest.raises(ScenarioError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[vm\nmemory_mib = 3")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)


def test_effective_scenario_round_trips() -> None:
    s = validate_scenario({"vm": {"memory_mib": 768}, "migration": {"strategy": "cold"}})
    assert validate_scenario(scenario_to_dict(s)) == s


@given(st.integers(min_value=1, max_value=65536))
def test_any_positive_memory_size_is_accepted(memory: int) -> None:
    assert validate_scenario({"vm": {"memory_mib": memory}}).vm.memory_mib == memory


@given(st.text(min_size=1, max_size=12).filter(lambda s: s not in STRATEGIES))
def test_any_other_strategy_is_refused_with_the_allowed_list(strategy: str) -> None:
    with pytest.raises(
        ScenarioError,
        match="choose one of: precopy, postcopy, hybrid, auto-converge, xbzrle, multifd, cold",
    ):
        validate_scenario({"migration": {"strategy": strategy}})


@pytest.mark.parametrize(
    ("strategy", "key", "value"),
    [
        ("precopy", "multifd_compression", "zstd"),
        ("multifd", "xbzrle_cache_mib", 128),
        ("postcopy", "postcopy_after_iterations", 5),
        ("xbzrle", "cpu_throttle_initial_pct", 50),
        ("precopy", "postcopy_preempt", True),
    ],
)
def test_a_knob_of_another_strategy_is_refused_with_the_reason(
    strategy: str, key: str, value: object
) -> None:
    with pytest.raises(ScenarioError) as info:
        validate_scenario({"migration": {"strategy": strategy, key: value}})
    assert f"migration.{key} tunes strategy" in str(info.value)
    assert f"not {strategy}" in str(info.value)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_round_trips(strategy: str) -> None:
    s = validate_scenario({"migration": {"strategy": strategy}})
    assert validate_scenario(scenario_to_dict(s)) == s


def test_on_stall_postcopy_takes_postcopy_preempt() -> None:
    scenario = validate_scenario({"migration": {"on_stall": "postcopy", "postcopy_preempt": True}})
    assert scenario.migration.postcopy_preempt


def test_on_stall_auto_converge_takes_the_throttle_knobs() -> None:
    scenario = validate_scenario(
        {"migration": {"on_stall": "auto-converge", "cpu_throttle_initial_pct": 50}}
    )
    assert scenario.migration.cpu_throttle_initial_pct == 50


@pytest.mark.parametrize(
    ("strategy", "why"), [("auto-converge", "on already"), ("postcopy", "cannot stall")]
)
def test_on_stall_auto_converge_is_refused_where_it_means_nothing(strategy: str, why: str) -> None:
    with pytest.raises(ScenarioError, match=why):
        validate_scenario({"migration": {"strategy": strategy, "on_stall": "auto-converge"}})


OWN_HOSTS = {
    "hosts": {
        "backend": "libvirt",
        "source_uri": "qemu+ssh://root@host1/system",
        "destination_uri": "qemu+tcp://host2/system",
        "domain": "web01",
    },
    "service": {"address": "192.0.2.10"},
}


def test_own_hosts_need_the_two_uris_the_domain_and_the_service_address() -> None:
    assert validate_scenario(OWN_HOSTS).hosts.real
    for key in ("destination_uri", "domain"):
        hosts = {k: v for k, v in OWN_HOSTS["hosts"].items() if k != key}
        with pytest.raises(ScenarioError, match=f"set hosts.{key}"):
            validate_scenario({**OWN_HOSTS, "hosts": hosts})
    with pytest.raises(ScenarioError, match="service.address"):
        validate_scenario({"hosts": OWN_HOSTS["hosts"]})
    with pytest.raises(ScenarioError, match="service.address is for your own hosts"):
        validate_scenario({"service": {"address": "192.0.2.10"}})


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("source_uri", "xen+ssh://root@host/system", "not a libvirt URI for QEMU"),
        ("destination_uri", "qemu+ssh://host", "not a libvirt URI for QEMU"),
        ("backend", "qemu", "set hosts.backend = 'libvirt'"),
        ("migration_uri", "http://host2", "not a migration URI"),
    ],
)
def test_own_hosts_bad_input_names_the_key(key: str, value: str, says: str) -> None:
    data = {**OWN_HOSTS, "hosts": {**OWN_HOSTS["hosts"], key: value}}
    with pytest.raises(ScenarioError, match=says):
        validate_scenario(data)


def test_cpu_ceilings_are_refused_with_libvirt() -> None:
    with pytest.raises(ScenarioError, match="qemu backend only"):
        validate_scenario({"hosts": {"backend": "libvirt", "destination_cpu": "Westmere"}})


def test_hosts_ssh_needs_your_own_hosts_with_host_names() -> None:
    assert validate_scenario({**OWN_HOSTS, "hosts": {**OWN_HOSTS["hosts"], "ssh": True}})
    with pytest.raises(ScenarioError, match="testbed's hosts are sampled directly"):
        validate_scenario({"hosts": {"ssh": True}})
    local = {**OWN_HOSTS["hosts"], "ssh": True, "destination_uri": "qemu:///system"}
    with pytest.raises(ScenarioError, match="hosts.destination_uri, and 'qemu:///system' names"):
        validate_scenario({**OWN_HOSTS, "hosts": local})


@pytest.mark.parametrize("count", [2, 3, 4, 6])
def test_testbed_hypervisors_from_2_to_6(count: int) -> None:
    s = validate_scenario(apply_overrides({}, [f"testbed.hypervisors={count}"]))
    assert s.testbed.hypervisors == count
    assert scenario_to_dict(s)["testbed"] == {"hypervisors": count}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (1, "testbed.hypervisors: 1 is out of range; use 2 to 6"),
        (7, "testbed.hypervisors: 7 is out of range; use 2 to 6"),
        (-3, "testbed.hypervisors: -3 is out of range; use 2 to 6"),
        ("four", "testbed.hypervisors: must be a valid integer"),
        (2.5, "testbed.hypervisors: must be a valid integer"),
    ],
)
def test_bad_testbed_hypervisors_is_one_line_with_the_range(value: object, says: str) -> None:
    with pytest.raises(ScenarioError) as info:
        validate_scenario({"testbed": {"hypervisors": value}}, "s.toml")
    assert str(info.value).startswith(f"s.toml: {says}")
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    with pytest.raises(ScenarioError, match="allowed keys in \\[testbed\\]: hypervisors"):
        validate_scenario({"testbed": {"hosts": 4}})


def test_testbed_hypervisors_is_refused_with_your_own_hosts() -> None:
    with pytest.raises(ScenarioError, match="your own hosts .* are not a testbed"):
        validate_scenario({**OWN_HOSTS, "testbed": {"hypervisors": 4}})


def test_an_unknown_key_with_a_line_break_is_named_on_one_line() -> None:
    """(Found by the fuzz test: TOML allows any quoted key.)"""
    with pytest.raises(ScenarioError) as info:
        validate_scenario({"0\n0": 0})
    assert "\n" not in str(info.value)
    assert "unknown key '0\\n0'" in str(info.value)
