"""DRAIN_DIR/drain.json: the drain's bill, as models (docs/drain.schema.json is generated from
them). What the drain took in all, what each guest's migration took beside what the plan said,
what the hosts' links and CPUs carried, and the worst any guest's service suffered. Every
figure carries its unit in its name; times are seconds since the drain started (its first
release), as the plan's are, unless the name says otherwise.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmigrate.drain.inputs import PlannerInputs
from vmigrate.drain.plan import Plan
from vmigrate.drain.planner import VmOutcome
from vmigrate.migration.orchestrator import Outcome
from vmigrate.result.base import NonNegFloat

DRAIN_SCHEMA_VERSION: Literal[1] = 1


class _Part(BaseModel):
    """A part of drain.json: strict about unknown keys, so the schema refuses them too."""

    model_config = ConfigDict(extra="forbid")


class DrainOutcome(StrEnum):
    """How the drain ended."""

    COMPLETED = "completed"  # every guest migrated, and was found on its new host, intact
    INCOMPLETE = "incomplete"  # some guest did not (it did not boot, move, or stay intact)
    FAILED = "failed"  # the drain stopped before its migrations (the error says why)
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM


class VmPrediction(_Part):
    """What the plan said of one guest's migration."""

    destination_host: str = Field(description="where the plan placed it")
    outcome: VmOutcome = Field(description="migrates, stalls (cancelled) or never-converges")
    start_s: float | None = Field(description="when it starts (null: the plan does not start it)")
    end_s: float | None = Field(description="when it ends")
    time_s: NonNegFloat | None = Field(description="end - start: the migration's own time")
    downtime_ms: NonNegFloat | None = Field(description="its pause")
    transferred_bytes: NonNegFloat = Field(description="everything it sends")


class VmErrors(_Part):
    """The plan against what happened (signed: predicted minus measured, over measured); null
    unless the migration completed."""

    time_pct: float | None = Field(description="the migration's time (the hypervisor's figure)")
    transferred_pct: float | None = Field(description="bytes sent")
    downtime_ms: float | None = Field(description="the pause, predicted minus reported, in ms")
    start_s: float | None = Field(description="its start, predicted minus measured, in s")


class VmBill(_Part):
    """One guest: where it went, what its migration took, what its service saw, and the plan's
    figures beside them. Its own result.json has the whole single-run bill."""

    name: str = Field(description="NAME-GROUP-K")
    group: str = Field(description="its [[groups]] entry")
    guest: int = Field(ge=1, description="its testbed guest (address 10.241.0.(100+guest))")
    source_host: str = Field(description="the testbed host it left")
    destination_host: str | None = Field(description="the testbed host it was sent to")
    running_on_host: str | None = Field(description="the testbed host it ran on at the end")
    booted: bool = Field(description="it booted and served, so the drain could move it")
    outcome: Outcome | None = Field(description="how its migration ended (null: none started)")
    verified: bool = Field(
        description="it runs on its destination, answers as the same boot, its memory intact"
    )
    memory_intact: bool | None = Field(
        description="its memory checksum unchanged and no write of its workload lost"
    )
    released_s: float | None = Field(description="when the drain released it")
    start_s: float | None = Field(description="when its migration started")
    end_s: float | None = Field(description="when its migration ended")
    migration_time_s: NonNegFloat | None = Field(description="the hypervisor's total time")
    downtime_ms: NonNegFloat | None = Field(description="the hypervisor's downtime")
    network_outage_ms: NonNegFloat | None = Field(description="no probe reply (outage section)")
    service_outage_ms: NonNegFloat | None = Field(description="no HTTP answer (outage section)")
    latency_p99_during_ms: NonNegFloat | None = Field(
        description="its requests' p99 during its migration"
    )
    transferred_bytes: int = Field(ge=0, description="what its migration sent")
    error: str | None = Field(description="why it did not complete (null: it did)")
    result: str | None = Field(description="its result.json, relative to the drain directory")
    predicted: VmPrediction | None = Field(description="the plan's figures (null: not planned)")
    errors: VmErrors | None = Field(description="the plan against what happened")


class HostBill(_Part):
    """One host of the testbed over the drain (from its first release to its last end): its
    uplink and its CPU, whole-host figures from the drain's own sampler."""

    tx_bytes: int | None = Field(ge=0, description="bytes its uplink sent")
    rx_bytes: int | None = Field(ge=0, description="bytes its uplink received")
    peak_tx_mbit_s: NonNegFloat | None = Field(description="the highest sampled send rate")
    peak_rx_mbit_s: NonNegFloat | None = Field(description="the highest sampled receive rate")
    cpu_seconds: NonNegFloat | None = Field(description="CPU its processes used")
    peak_cpu_pct: NonNegFloat | None = Field(description="the highest sampled CPU, % of a core")


class WorstImpact(_Part):
    """The worst any guest's service suffered, and which guest."""

    largest_outage_ms: NonNegFloat | None = Field(description="the longest service outage")
    largest_outage_vm: str | None = Field(description="whose")
    largest_downtime_ms: NonNegFloat | None = Field(description="the longest pause")
    largest_downtime_vm: str | None = Field(description="whose")
    worst_p99_ms: NonNegFloat | None = Field(description="the worst p99 during a migration")
    worst_p99_vm: str | None = Field(description="whose")


class Prediction(_Part):
    """The drain's time, predicted and measured."""

    predicted_drain_time_s: NonNegFloat = Field(description="the plan's total time")
    measured_drain_time_s: NonNegFloat | None = Field(description="total_drain_time_s")
    drain_time_error_pct: float | None = Field(description="predicted minus measured, in %")
    median_vm_time_error_pct: float | None = Field(
        description="the median of the guests' time_pct (completed ones): the plan's bias"
    )
    median_abs_vm_time_error_pct: float | None = Field(
        description="the median of their size, |time_pct|: how far off a guest's time is"
    )
    calibrated_runs: int = Field(ge=0, description="runs the model was fitted to (0: physics)")


class DrainBill(_Part):
    """drain.json: the whole drain."""

    schema_version: Literal[1] = Field(DRAIN_SCHEMA_VERSION, description="this document's format")
    name: str = Field(description="the drain file's name")
    started_at: str = Field(description="wall-clock start, ISO 8601 UTC (display only)")
    t0_ns: int = Field(description="CLOCK_MONOTONIC ns of the drain's first release (time 0)")
    testbed: str = Field(description="the testbed's name")
    hypervisors: int = Field(ge=2, description="its hypervisor hosts")
    backend: str = Field(description="qemu or libvirt")
    drained_host: str = Field(description="the host drained")
    receivers: list[str] = Field(description="the hosts that could receive")
    outcome: DrainOutcome = Field(description="how the drain ended")
    error: str | None = Field(description="why it failed (null: it did not)")
    timeline_s: dict[str, float] = Field(
        description="named moments since time 0 (negative: before the first release): "
        "start, booted, measured, baseline_start, baseline_end, drain_end"
    )
    total_drain_time_s: NonNegFloat | None = Field(
        description="from the first release to the end of the last migration"
    )
    inputs: PlannerInputs | None = Field(description="what the plan was made from")
    plan: Plan | None = Field(description="the plan, as `vmigrate plan --json` writes it")
    prediction: Prediction | None = Field(description="the plan's drain time beside the measured")
    vms: list[VmBill] = Field(description="every guest, in the order the plan starts them")
    hosts: dict[str, HostBill] = Field(
        description="every hypervisor host and the storage host, by testbed name"
    )
    sampler: str = Field(description="where the host figures come from")
    worst: WorstImpact = Field(description="the worst service impact")
    files: dict[str, str] = Field(description="the drain directory's files, by what they hold")
