"""result.json as a whole: what the run itself recorded (`Recorded`: scenario, environment,
outcome, the hypervisor's figures, timeline, events, verification) and the document the
analysis completes from the recorded series (`Result`: phases, service, outage, resources,
data, prediction, consistency checks). Field order is the document's key order."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from vmigrate.config import Scenario
from vmigrate.hypervisor.base import EventKind
from vmigrate.migration.orchestrator import Outcome
from vmigrate.result.base import Section, absent
from vmigrate.result.checks import ConsistencyCheck
from vmigrate.result.fault import Fault
from vmigrate.result.migration import Data, MigrationFigures, Phases
from vmigrate.result.outage import Outage
from vmigrate.result.prediction import Prediction
from vmigrate.result.preflight import PreflightResult
from vmigrate.result.resources import Resources
from vmigrate.result.service import Service

SCHEMA_VERSION: Literal[1] = 1
Host = Literal["source", "destination"]
RunsOn = Literal["destination", "source", "none"]


def scenario_shape() -> dict[str, Any]:
    """The scenario echo's shape, from the scenario model itself: every section and every key
    is spelled out (the echo is the full effective scenario); the values are not checked."""
    sections: dict[str, Any] = {}
    for name, info in Scenario.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            sections[name] = {"type": "object", "required": list(kind.model_fields)}
    return {"required": list(Scenario.model_fields), "properties": sections}


class Clock(Section):
    """The run's time origin."""

    t0_ns: int = Field(description="CLOCK_MONOTONIC ns of the run's start")


class Environment(Section):
    """Where and with what the run ran. Hypervisor versions beyond QEMU's come as they are."""

    model_config = ConfigDict(extra="allow")

    tool_version: str = Field(description="vmigrate's version")
    testbed: str = Field(description="the testbed's name (empty on your own hosts)")
    accel: Literal["kvm", "tcg", ""] = Field(description="empty: the domain's own (own hosts)")
    accel_reason: str = Field(description="why that accelerator")
    backend: str | None = Field(None, description="qemu or libvirt (null: none started)")
    qemu_version: str = Field(description="the source's QEMU")
    libvirt_version: str | None = Field(None, exclude_if=absent, description="libvirt only")
    guest_kernel: str = Field(description="the guest image's kernel (empty on your own hosts)")
    guest_image_digest: str = Field(description="the guest image's digest (idem)")
    source_uri: str | None = Field(None, exclude_if=absent, description="own hosts only")
    destination_uri: str | None = Field(None, exclude_if=absent, description="own hosts only")
    resources_measured: str | None = Field(
        None,
        exclude_if=absent,
        description="own hosts only: what the resource series hold, per host",
    )
    guest: int | None = Field(
        None,
        exclude_if=absent,
        ge=0,
        description="a testbed VM beside others only (a drain's): which guest it was (its "
        "address, MAC and tap); its hosts are still called source and destination here",
    )
    source_host: str | None = Field(
        None, exclude_if=absent, description="idem: the testbed host that was its source"
    )
    destination_host: str | None = Field(
        None, exclude_if=absent, description="idem: the testbed host that was its destination"
    )


class Event(Section):
    """A hypervisor event, on vmigrate's clock."""

    t_s: float = Field(description="seconds since the run started")
    host: Host = Field(description="whose hypervisor sent it")
    event: EventKind = Field(description="what the event means, whichever backend sent it")
    name: str = Field(
        description="the backend's own name for the event (QMP STOP, libvirt lifecycle ...)"
    )
    data: dict[str, Any] = Field(description="the event's own data (e.g. status, pass)")


class Verification(Section):
    """What was checked after the run: where the VM runs, and whether it is intact."""

    running_on: RunsOn = Field(description="which host runs the VM now")
    source_state_after: str | None = Field(
        None,
        description="the source hypervisor's run state once the migration completed "
        "(postmigrate = paused for good)",
    )
    service_ok_after: bool = Field(
        description="HTTP answered from the guest IP after the run, by the same boot of the guest"
    )
    memory_checksum_ok: bool | None = Field(
        description="the guest's pattern region (seeded per boot) has the same checksum before "
        "and after; null on your own hosts (no vmigrate agent in the guest to ask)"
    )
    memory_writes_intact: bool | None = Field(
        description="every page the memory workload wrote still holds the value its ledger "
        "says (no update lost by the migration); null on your own hosts (no vmigrate agent in "
        "the guest to ask)"
    )
    working_set_pages_checked: int = Field(ge=0, description="pages of the ledger checked")
    working_set_pages_mismatched: int | None = Field(
        ge=0, description="of them, those that did not hold their value"
    )
    disk_checksum_ok: bool | None = Field(
        None,
        description="every block the guest wrote to its disk (a known pattern, before and "
        "during the migration) reads back as written afterwards; null on your own hosts (no "
        "vmigrate agent in the guest to ask)",
    )
    disk_blocks_checked: int = Field(0, ge=0, description="disk blocks read back")
    disk_blocks_mismatched: int | None = Field(
        None, ge=0, description="of them, those that did not read back as written"
    )
    boot_id_before: str | None = Field(None, exclude_if=absent, description="guest boot id")
    boot_id_after: str | None = Field(None, exclude_if=absent, description="guest boot id")
    memory_checksum_before: str | None = Field(
        None, exclude_if=absent, description="the pattern region's checksum"
    )
    memory_checksum_after: str | None = Field(
        None, exclude_if=absent, description="the pattern region's checksum"
    )


class Recorded(Section):
    """What only the run itself knew; `vmigrate report RUN` keeps it and redoes the rest."""

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="this document's format")
    started_at: str = Field(description="wall-clock start, ISO 8601 UTC (display only)")
    clock: Clock = Field(
        description="CLOCK_MONOTONIC ns of the run's start: series times minus t0_ns are "
        "seconds since start"
    )
    scenario: dict[str, Any] = Field(
        json_schema_extra=scenario_shape(),
        description="the full effective scenario, every default spelled out",
    )
    environment: Environment = Field(description="where and with what the run ran")
    outcome: Outcome = Field(
        description="how the migration ended; vm_lost: neither host runs the VM, nor can any "
        "more (the source died before the hand-over, or an end died during post-copy)"
    )
    error: str | None = Field(description="why the run failed (null: it did not)")
    preflight: PreflightResult | None = Field(
        None,
        description="the pre-flight checks run before the guest booted (null when the run "
        "failed before they could run)",
    )
    migration: MigrationFigures = Field(description="the hypervisor's figures")
    timeline_s: dict[str, float] = Field(
        description="named moments (boot_start, guest_ready, baseline_start, "
        "destination_prepare, migration_start, migration_end, after_end; baseline_end where "
        "the baseline ended before the migration began: a VM that waited its turn)"
    )
    events: list[Event] = Field(description="every hypervisor event, in order")
    verification: Verification = Field(description="what was checked after the run")
    files: dict[str, str] = Field(description="the run directory's logs, by what they hold")
    fault: Fault | SkipJsonSchema[None] = Field(
        None,
        exclude_if=absent,
        description="the fault injected while the VM migrated (scenario [fault]); absent "
        "without one",
    )


class Result(Recorded):
    """One migration experiment. Every figure carries its unit in its name (_s, _ms, _bytes,
    _mbit_s, _mib). Times in timeline_s and events are seconds since the run started, on the
    monotonic clock."""

    phases: Phases = Field(
        description="moments of the migration, seconds since the migration started "
        "(windows_s: since the run started)"
    )
    service: Service = Field(description="what a client of the guest's service saw")
    outage: Outage | SkipJsonSchema[None] = Field(
        None,
        description="the outage the migration caused, decomposed, each part from its own "
        "instrument (null only in documents older than it)",
    )
    resources: Resources = Field(description="what the migration cost each host")
    data: Data = Field(description="bytes and pages the migration moved")
    prediction: Prediction | None = Field(
        None,
        description="what the model (with the constants `vmigrate calibrate` fitted) predicted "
        "before the migration, beside what happened; null when the pre-flight estimate did "
        "not run",
    )
    checks: list[ConsistencyCheck] = Field(
        description="figures from independent sources that must agree"
    )
