"""The migration's own story: its phases (from hypervisor events) and the data it moved (from
the progress series), all in seconds since the migration started."""

from __future__ import annotations

from typing import Any

import numpy as np

from vmigrate.analysis.windows import Array, Windows, finite_or_none
from vmigrate.hypervisor.base import EventKind
from vmigrate.result.document import Event
from vmigrate.result.migration import Data, DirtyRate, Pass, Phases

MIB = 1024 * 1024


def phases_section(events: list[Event], windows: Windows) -> Phases:
    """Iterations, stop-and-copy, resume on the destination and completion, relative to the
    migration's start; plus the three measurement windows (seconds since the run started)."""
    start_s = (windows.during[0] - windows.t0_ns) / 1e9

    def rel(event: Event) -> float:
        return round(event.t_s - start_s, 6)

    def first(host: str, kind: EventKind, **data: Any) -> float | None:
        for event in events:
            if (
                event.host == host
                and event.event == kind
                and all(event.data.get(k) == v for k, v in data.items())
            ):
                return rel(event)
        return None

    iterations = [
        Pass(pass_=int(e.data.get("pass", 0)), t_s=rel(e))
        for e in events
        if e.host == "source" and e.event == EventKind.MIGRATION_PASS
    ]
    return Phases(
        windows_s=windows.as_seconds(),
        iterations=iterations,
        stop_and_copy_s=first("source", EventKind.STOPPED),
        resume_on_destination_s=first("destination", EventKind.RESUMED),
        completion_s=first("source", EventKind.MIGRATION_STATUS, status="completed"),
    )


def data_section(progress: dict[str, Array], guest_ram_bytes: int) -> Data:
    """Bytes and pages moved, dirty rate and amplification, from the progress polls; a
    migration restarted by on_stall = auto-converge counts what every attempt moved."""
    column_attempt = progress.get("attempt")

    def final(column: str) -> int:
        values = progress.get(column)
        if values is None:
            return 0
        attempts = column_attempt if column_attempt is not None else np.ones(len(values))
        total = 0
        for attempt in np.unique(attempts[~np.isnan(attempts)]):
            mine = values[(attempts == attempt) & ~np.isnan(values)]
            total += int(mine[-1]) if len(mine) else 0
        return total

    dirty = progress.get("dirty_rate_mib_s", np.array([]))
    dirty = dirty[~np.isnan(dirty)]
    transferred = final("transferred_bytes")
    return Data(
        transferred_bytes=transferred,
        zero_pages=final("zero_pages"),
        normal_pages=final("normal_pages"),
        normal_bytes=final("normal_bytes"),
        precopy_bytes=final("precopy_bytes"),
        downtime_bytes=final("downtime_bytes"),
        postcopy_bytes=final("postcopy_bytes"),
        dirty_rate_mib_s=DirtyRate(
            mean=finite_or_none(float(np.mean(dirty))) if len(dirty) else None,
            peak=finite_or_none(float(np.max(dirty))) if len(dirty) else None,
        ),
        iterations=final("iterations"),
        amplification_ratio=finite_or_none(transferred / guest_ram_bytes, 4)
        if guest_ram_bytes
        else None,
    )
