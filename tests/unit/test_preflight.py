"""Pre-flight logic on a small hand-made CPU catalog and known numbers: which features are
missing where, which baseline is chosen, when a shared disk is unsafe, what pre-copy predicts."""

from __future__ import annotations

import math

import pytest

from vmigrate.config import validate_scenario
from vmigrate.errors import UsageError
from vmigrate.hypervisor.cpu import CpuCatalog, CpuModel, baseline, missing
from vmigrate.migration.estimate import precopy_estimate
from vmigrate.migration.preflight import cache_check, cpu_check

OLD = frozenset({"fpu", "sse", "sse2"})
NEW = OLD | {"avx", "avx2"}
TCG = NEW | {"3dnow"}  # what the accelerator implements: everything but "pcid"


def model(name: str, features: frozenset[str], alias_of: str | None = None) -> CpuModel:
    return CpuModel(
        name, alias_of, migration_safe=True, deprecated=False, features=features,
        unavailable=features - TCG,  # as query-cpu-definitions says under TCG
    )  # fmt: skip


CATALOG = CpuCatalog(
    accel="tcg",
    models={
        m.name: m
        for m in [
            model("Old-v1", OLD),
            model("Old", OLD, alias_of="Old-v1"),
            model("New-v1", NEW),
            model("New-v2", NEW | {"pcid"}),  # same under TCG, but asks for what TCG drops
            model("Tiny", frozenset({"fpu"})),
            model("max", TCG),
        ]
    },
    accel_features=TCG,
    known_features=TCG | {"pcid"},
)


def scenario(cpu: str, source: str = "New-v1", destination: str = "Old") -> object:
    return validate_scenario(
        {"vm": {"cpu_model": cpu}, "hosts": {"source_cpu": source, "destination_cpu": destination}}
    )


def test_a_guest_newer_than_the_destination_fails_naming_every_missing_feature() -> None:
    check = cpu_check(scenario("New-v1"), CATALOG, "New-v1")  # type: ignore[arg-type]
    assert check.status == "fail"
    assert "host CPU does not provide required features" in check.message
    assert "destination (CPU Old): avx, avx2" in check.message
    assert "source" not in check.message.split(":", 1)[1]  # the source offers all of it
    assert 'vm.cpu_model = "baseline" (here: Old-v1' in check.fix
    assert check.figures["missing"] == {"source": [], "destination": ["avx", "avx2"]}


def test_a_guest_every_host_offers_passes_and_names_what_tcg_drops() -> None:
    check = cpu_check(scenario("New-v2", destination="New-v1"), CATALOG, "New-v2")  # type: ignore[arg-type]
    assert check.status == "pass", check.message
    assert "TCG does not implement pcid" in check.message


def test_baseline_is_the_most_capable_model_every_host_offers() -> None:
    chosen = baseline(CATALOG, [CATALOG.offered("New-v1", "x"), CATALOG.offered("Old", "x")])
    assert (chosen.model, chosen.extra_features) == ("Old-v1", ())  # not the alias, not Tiny
    # Two new hosts: New-v1 and New-v2 are alike under TCG; the one TCG runs as asked wins.
    assert baseline(CATALOG, [CATALOG.offered("New-v1", "x")] * 2).model == "New-v1"
    # Hosts offering more than any model: the model plus the rest as feature switches.
    chosen = baseline(CATALOG, [CATALOG.offered("", "x")] * 2)
    assert chosen.cpu_model == "New-v1,3dnow=on"


def test_feature_switches_count_and_unknown_names_are_bad_input() -> None:
    assert CATALOG.requested("Old,avx=on,-sse") == (OLD | {"avx"}) - {"sse"}
    assert CATALOG.requested("Old,+avx2") == OLD | {"avx2"}
    assert missing(CATALOG.requested("Old,+avx"), OLD) == ["avx"]
    with pytest.raises(UsageError, match="'Olde' is not a CPU model QEMU knows"):
        CATALOG.requested("Olde")
    with pytest.raises(UsageError, match="'avz' is not a CPU feature"):
        CATALOG.requested("Old,avz=on")


@pytest.mark.parametrize(
    ("storage", "cache", "unsafe", "status"),
    [
        ("shared-nfs", "none", False, "pass"),
        ("shared-nfs", "directsync", False, "pass"),
        ("shared-nfs", "writeback", False, "fail"),
        ("shared-nfs", "writeback", True, "warn"),
        ("shared-nfs", "unsafe", False, "fail"),
        ("local", "writeback", False, "pass"),
    ],
)
def test_a_cached_shared_disk_is_unsafe_to_migrate(
    storage: str, cache: str, unsafe: bool, status: str
) -> None:
    s = validate_scenario({"vm": {"disk_cache": cache}, "storage": {"mode": storage}})
    check = cache_check(s, unsafe)
    assert check.status == status
    if status != "pass":
        assert "migration is unsafe" in check.message
        assert 'vm.disk_cache = "none"' in check.fix


MIB = 1024 * 1024


def test_precopy_model_matches_the_closed_form() -> None:
    # M = 512 MiB, D/B = 1/4, B = 100 MiB/s, limit 300 ms → budget θ = 30 MiB, undershoot 25 ms
    # → QEMU leaves K = 27.5 MiB at each look. Pass 0: 512 (128 dirtied); the bursts send down
    # to K: b = 128 - 27.5 = 100.5, then b/4, b/16; the last dirties b/64 ≤ 2.5: the pause
    # holds K + b/64.
    est = precopy_estimate(512 * MIB, 25 * MIB, 100 * MIB, 300)
    b = 100.5
    stop = 27.5 + b / 64
    assert est.converges and est.passes == 4 and est.iterations == 6
    assert est.downtime_ms == pytest.approx(stop / 100 * 1000)
    total = 512 + b * (1 + 1 / 4 + 1 / 16) + stop
    assert est.transferred_bytes == pytest.approx(total * MIB)
    assert est.total_time_s == pytest.approx(total / 100)


@pytest.mark.parametrize("dirty", [100, 150])
def test_precopy_does_not_converge_when_the_guest_dirties_as_fast_as_the_link(dirty: int) -> None:
    est = precopy_estimate(512 * MIB, dirty * MIB, 100 * MIB, 300)
    assert not est.converges
    assert est.total_time_s is None and est.downtime_ms is None


def test_an_idle_guest_stops_after_the_first_pass() -> None:
    est = precopy_estimate(512 * MIB, 0, 100 * MIB, 300)
    assert est.passes == 1 and est.downtime_ms == 0.0
    assert math.isclose(est.total_time_s or 0, 5.12)


@pytest.mark.parametrize(
    ("migration", "status"),
    [
        ({}, "pass"),
        ({"strategy": "auto-converge"}, "pass"),
        ({"strategy": "postcopy"}, "warn"),
        ({"strategy": "hybrid"}, "warn"),
        ({"on_stall": "postcopy"}, "warn"),
    ],
)
def test_postcopy_is_a_risk_pre_flight_names(migration: dict[str, str], status: str) -> None:
    from vmigrate.config import validate_scenario
    from vmigrate.migration.preflight import postcopy_risk_check

    check = postcopy_risk_check(validate_scenario({"migration": migration}))
    assert check.status == status
    if status == "warn":
        assert "the VM is lost" in check.message and "pre-copy with auto-converge" in check.fix
