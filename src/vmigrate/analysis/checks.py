"""Consistency checks: figures from independent sources that must agree physically. A false
check means a number in the report is wrong (or the testbed misbehaved); it is shown in red."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmigrate.analysis.referee import AGREEMENT_MS
from vmigrate.migration.orchestrator import Outcome
from vmigrate.result.checks import ConsistencyCheck
from vmigrate.result.document import Result
from vmigrate.result.outage import Capture

LINK_TOLERANCE = 1.02  # tbf lets a burst of a few ms through above the rate
#: The most a TCP socket holds unsent or unacknowledged: Linux's default net.ipv4.tcp_wmem
#: maximum (the testbed's hosts keep it).
SEND_BUFFER_BYTES = 4 * 1024 * 1024


def check(name: str, ok: bool | None, detail: str, **figures: Any) -> ConsistencyCheck:
    return ConsistencyCheck(name=name, ok=ok, detail=detail, figures=figures)


def uplink_check(result: Result) -> ConsistencyCheck:
    """The source's uplink sent at least what QEMU says it sent: else a byte count is wrong.
    QEMU counts what it wrote to its socket: when the stream broke (a post-copy pause, a
    migration that did not complete) what still sat in the socket's send buffer never went
    out, so each break may take up to one send buffer off the wire."""
    source = result.resources.hosts.get("source")
    transferred = result.migration.transferred_bytes
    tx = source.net_tx_bytes.during if source else None
    breaks = len(result.migration.postcopy_pauses) + (result.outcome != Outcome.COMPLETED)
    allowance = breaks * SEND_BUFFER_BYTES
    return check(
        "source_uplink_carried_the_migration",
        None if tx is None or not transferred else tx >= transferred - allowance,
        "bytes the source host's uplink sent during the migration ≥ bytes QEMU says it sent "
        "(less one socket send buffer for each time the stream broke)",
        source_uplink_tx_bytes=tx,
        transferred_bytes=transferred,
        stream_breaks=breaks,
        unsent_allowance_bytes=allowance,
    )


def downtime_check(result: Result) -> ConsistencyCheck:
    """The probe saw at least the pause the hypervisor reports: else one of the two is wrong."""
    mig, service = result.migration, result.service
    observed = service.observed_downtime_ms
    reported = mig.downtime_reported_ms
    interval = service.probe_interval_ms
    # The vCPUs' own pause, from the hypervisor's events (stopped on the source → resumed on
    # the destination). A backend's "downtime" can exceed it by its bookkeeping (libvirt times
    # its own handling of both events), so the lower bound is the smaller of the two.
    stop_s, resume_s = result.phases.stop_and_copy_s, result.phases.resume_on_destination_s
    paused = (resume_s - stop_s) * 1000 if stop_s is not None and resume_s is not None else None
    floor = reported if paused is None or reported is None else min(reported, paused)
    return check(
        "observed_downtime_covers_reported",
        None if observed is None or floor is None else observed >= floor - interval,
        "a client sees at least the pause the hypervisor reports — its downtime, or its "
        "events' stop-to-resume if shorter — minus one probe interval",
        observed_downtime_ms=observed,
        downtime_reported_ms=reported,
        vcpu_pause_from_events_ms=round(paused, 3) if paused is not None else None,
        probe_interval_ms=interval,
    )


def throughput_check(result: Result) -> ConsistencyCheck:
    """The average rate fits through the shaped link: else the bytes or the time are wrong."""
    mig = result.migration
    total_s = mig.total_time_s
    link_mbit = result.scenario["network"]["bandwidth_mbit"]
    rate = mig.transferred_bytes * 8 / total_s / 1e6 if total_s else None
    return check(
        "throughput_within_link_rate",
        None if rate is None else rate <= link_mbit * LINK_TOLERANCE,
        f"transferred bytes / total time ≤ the link rate (+{LINK_TOLERANCE - 1:.0%} for "
        "the token bucket's burst)",
        average_mbit_s=round(rate, 3) if rate is not None else None,
        link_mbit_s=link_mbit,
    )


def capture_check(result: Result) -> ConsistencyCheck:
    """The probe's outage matches the packet capture's: the wire referees the probe."""
    capture = result.outage.capture if result.outage else None
    wire = capture if isinstance(capture, Capture) else None
    differ = wire.probe_minus_capture_ms if wire else None
    return check(
        "probe_agrees_with_capture",
        None if differ is None else abs(differ) <= AGREEMENT_MS,
        f"the probe's network outage is the packet capture's, within ±{AGREEMENT_MS:g} ms",
        probe_minus_capture_ms=differ,
        capture_network_outage_ms=wire.network_outage_ms if wire else None,
    )


def reachability_check(result: Result) -> ConsistencyCheck:
    """The guest answered after the migration: a migration that loses the service failed."""
    after = result.service.probe_replies_after_migration
    return check(
        "service_reachable_after_migration",
        None if after is None else after > 0,
        "the guest answered the probe after the migration window",
        probe_replies_after=after,
    )


#: Every family of checks, in the order the report lists them.
CHECKS: tuple[Callable[[Result], ConsistencyCheck], ...] = (
    uplink_check,
    downtime_check,
    throughput_check,
    capture_check,
    reachability_check,
)


def consistency_checks(result: Result) -> list[ConsistencyCheck]:
    """The checks of one run, from its result sections."""
    return [family(result) for family in CHECKS]
