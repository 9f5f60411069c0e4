"""The `service` section of result.json: what a client of the guest's service saw."""

from __future__ import annotations

from pydantic import Field

from vmigrate.result.base import Count, NonNegFloat, Section


class LatencySummary(Section):
    """Request latency over one window, ms from each request's intended send time
    (nearest-rank percentiles)."""

    count: Count = Field(description="requests answered in the window")
    p50: NonNegFloat | None = Field(description="ms")
    p90: NonNegFloat | None = Field(description="ms")
    p99: NonNegFloat | None = Field(description="ms")
    p999: NonNegFloat | None = Field(description="ms")
    max: NonNegFloat | None = Field(description="ms")
    mean: NonNegFloat | None = Field(description="ms")


class Requests(Section):
    """How the HTTP requests of the open-loop load ended."""

    sent: Count = Field(description="requests sent over the run")
    ok: Count = Field(description="answered with HTTP 200")
    errors: Count = Field(description="failed otherwise than by a timeout")
    timeouts: Count = Field(description="no answer within load.timeout_ms")
    failed_during: Count = Field(
        description="requests sent in the migration window that did not succeed"
    )


class SlaViolations(Section):
    """Requests of the migration window slower than the SLA (or failed)."""

    over_sla: Count = Field(description="slower than sla_ms, or failed")
    over_2x_baseline_p99: Count | None = Field(
        description="slower than twice the baseline's p99, or failed (null: no baseline)"
    )
    baseline_p99_ms: NonNegFloat | None = Field(description="the baseline's p99 latency")


class Service(Section):
    """What a client saw: the probe's outage, request latency per window, errors, SLA
    violations and throughput (`service`)."""

    probe_interval_ms: float = Field(gt=0, description="resolution of observed_downtime_ms")
    observed_downtime_ms: NonNegFloat | None = Field(
        description="longest gap between successful probe replies overlapping the migration window"
    )
    observed_downtime_start_s: float | None = Field(
        description="when that gap began, seconds since the run started"
    )
    probe_sent: Count = Field(description="probes sent in the migration window")
    probe_lost: Count = Field(description="probes of the migration window that got no reply")
    probe_replies_after_migration: Count | None = Field(
        description="probe replies received in the after window (null: no probe ran)"
    )
    latency_ms: dict[str, LatencySummary | None] = Field(
        description="baseline, during, after (null: no request answered in that window)"
    )
    requests: Requests = Field(description="how the requests ended")
    sla_ms: float = Field(description="load.sla_ms")
    sla_violations: SlaViolations = Field(description="requests of the migration window")
    throughput_rps: dict[str, NonNegFloat | None] = Field(
        description="responses completed per second, per window"
    )
    histograms: dict[str, str | None] = Field(
        {},
        description="HdrHistogram (latency in µs), base64 compressed, per window",
    )
