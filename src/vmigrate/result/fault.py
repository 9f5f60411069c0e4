"""The `fault` section of result.json: the fault injected while the VM migrated (scenario
[fault]) and what it cost."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vmigrate.result.base import Count, NonNegFloat, Section


class Fault(Section):
    """What was injected, when, and its effect: the outage, the recovery, where the VM ended.
    The injector records the first part; the analysis adds the effect."""

    kind: str = Field(description="fault.kind")
    at: str = Field(description="fault.at: a share of the bytes, or seconds")
    duration_ms: Count = Field(description="fault.duration_ms (0: for good)")
    injected: bool = Field(description="the fault happened")
    injected_at_s: float | None = Field(description="seconds since the run started")
    injected_after_migration_start_s: float | None = Field(
        description="seconds since the migration started"
    )
    undone_at_s: float | None = Field(
        description="when the fault was undone (link up, SIGCONT); null if it could not be or "
        "was not"
    )
    actions: list[str] = Field(description="what was done to inject and undo it")
    error: str | None = Field(description="why the fault could not be injected")
    vm_ends_on: Literal["destination", "source", "none"] | None = Field(
        None,
        description="where the VM runs after the fault: source, destination or none (lost)",
    )
    intact: bool = Field(
        False,
        description="memory checksum, guest writes and disk content all intact after the fault",
    )
    service_outage_ms: NonNegFloat | None = Field(
        None,
        description="the longest time the client got no probe reply, from the fault on",
    )
    recovery_ms: NonNegFloat | None = Field(
        None,
        description="from the fault until the migration was settled: the VM runs on one host "
        "(moved, rolled back, recovered) or is known lost",
    )
