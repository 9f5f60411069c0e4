"""The `outage` section of result.json: the outage the migration caused, decomposed, each part
from its own instrument (analysis/outage.py), with the switch-over's waterfall and the probe
refereed by a packet capture (analysis/referee.py)."""

from __future__ import annotations

from pydantic import Field

from vmigrate.result.base import Count, NonNegFloat, Section


class Waterfall(Section):
    """The switch-over's moments, seconds since the migration started; null where no
    instrument saw it."""

    last_pass: float | None = Field(
        description="the last pre-copy pass that began while the vCPUs ran"
    )
    stop: float | None = Field(description="the source's vCPUs stopped")
    device_state: float | None = Field(
        description="the source began sending device state (QEMU only)"
    )
    ram_saved: float | None = Field(
        None,
        description="QEMU's checkpoint: the last RAM pass written to the stream "
        "(src-iterable-saved)",
    )
    devices_saved: float | None = Field(
        None,
        description="QEMU's checkpoint: the device state written to the stream "
        "(src-non-iterable-saved)",
    )
    source_done: float | None = Field(description="the source finished the stream")
    destination_loaded: float | None = Field(
        None,
        description="QEMU's checkpoint: the destination has loaded it all "
        "(dst-precopy-loadvm-completed)",
    )
    destination_running: float | None = Field(description="the destination's vCPUs ran")
    announce: float | None = Field(
        None,
        description="the guest's first ARP/RARP frame on the client's wire after it ran on the "
        "destination (needs the capture)",
    )
    first_packet: float | None = Field(description="the first probe reply after that")
    first_response: float | None = Field(description="the first completed HTTP response after that")


class ReceiveOffset(Section):
    """How far the probe's receive times lie from the wire's, µs."""

    median: float | None = Field(description="probe receive time minus wire time, µs")
    max_abs: float | None = Field(description="µs")


class Capture(Section):
    """The probe refereed by a packet capture on the client host's interface."""

    network_outage_ms: NonNegFloat | None = Field(
        description="the longest time without a probe echo, timed on the wire"
    )
    network_outage_start_s: float | None = Field(
        description="when that gap began, seconds since the run started"
    )
    probe_minus_capture_ms: float | None = Field(
        description="the probe's network outage minus the wire's"
    )
    replies_on_wire: Count = Field(description="probe echoes the capture saw")
    replies_probe_missed: Count = Field(description="echoes on the wire the probe did not record")
    replies_not_on_wire: Count = Field(
        description="echoes the probe recorded that the capture did not see"
    )
    receive_offset_us: ReceiveOffset = Field(description="probe receive time minus wire time")
    kernel_dropped: Count | None = Field(description="packets the capture lost in the kernel")
    guest_announce_s: float | None = Field(
        description="the guest's first ARP/RARP frame after it ran on the destination, seconds "
        "since the run started"
    )
    error: None = Field(None, description="null: the capture was read")


class CaptureFailure(Section):
    """A capture that was made but could not be read."""

    error: str = Field(description="why the capture could not be read")


class Outage(Section):
    """The outage the migration caused, decomposed, each part from its own instrument."""

    blackout_ms: NonNegFloat | None = Field(
        description="vCPUs stopped on the source (its last STOP) to running on the destination "
        "(its first RESUME), from both hypervisors' events on vmigrate's clock"
    )
    reconvergence_ms: NonNegFloat | None = Field(
        description="running on the destination to the first probe reply the client received"
    )
    stop_to_last_reply_ms: float | None = Field(
        None,
        description="the vCPU stop to the last probe reply before the outage (positive: "
        "replies the guest made before it stopped still reached the client after it, queued "
        "in the source's network backend); network_outage_ms = blackout_ms + reconvergence_ms "
        "- this",
    )
    network_outage_ms: NonNegFloat | None = Field(
        description="the longest time the client received no probe reply "
        "(service.observed_downtime_ms)"
    )
    service_outage_ms: NonNegFloat | None = Field(
        description="the longest time no HTTP response completed"
    )
    brownout_ms: NonNegFloat | None = Field(
        description="how long some HTTP request was slower than sla_ms or failed: the union of "
        "[intended send, completion] over those requests, from the migration's start to the "
        "run's end"
    )
    hypervisor_downtime_ms: NonNegFloat | None = Field(
        description="the hypervisor's own downtime figure (migration.downtime_reported_ms)"
    )
    sla_ms: NonNegFloat = Field(description="load.sla_ms")
    capture: Capture | CaptureFailure | None = Field(
        None,
        description="the probe refereed by a packet capture on the client host's interface "
        "(measure.capture); null without one",
    )
    waterfall_s: Waterfall = Field(
        description="the switch-over's moments, seconds since the migration started; null "
        "where no instrument saw it"
    )
