"""Recorded time series → the cost figures of result.json. Reads files only, so it runs (and
is tested) without any VM, and `vmigrate report RUN` can redo it from a run directory."""

from __future__ import annotations

from pathlib import Path

from vmigrate.analysis.checks import consistency_checks
from vmigrate.analysis.fault import fault_effect
from vmigrate.analysis.migration import data_section, phases_section
from vmigrate.analysis.outage import outage_section, switchover_moments
from vmigrate.analysis.prediction import prediction_section
from vmigrate.analysis.referee import referee_section
from vmigrate.analysis.resources import resources_section, table
from vmigrate.analysis.service import answered, service_section
from vmigrate.analysis.windows import Windows
from vmigrate.measure.recorder import SERIES_DIR, load_series
from vmigrate.result.document import Recorded, Result
from vmigrate.result.outage import Outage


def analyze(run_dir: Path, recorded: Recorded) -> Result:
    """`recorded` (its scenario, timeline, events, migration figures) completed with the
    sections computed from RUN/series (and the prediction): phases, service, outage,
    resources, data, prediction, checks. A whole `Result` may be given: its analysed sections
    are computed anew."""
    scenario = recorded.scenario
    windows = Windows.from_marks(recorded.clock.t0_ns, recorded.timeline_s)
    probe, _ = load_series(run_dir, "probe")
    requests, request_text = load_series(run_dir, "requests")
    progress, _ = load_series(run_dir, "migration")
    series = {
        name: table(*load_series(run_dir, name)) for name in ("processes", "threads", "links")
    }
    errors = request_text.get("error", [])
    # analysis/outage.py reads events and the capture as plain dicts
    events = [event.model_dump() for event in recorded.events]
    stop_s = switchover_moments(events)["stop"]
    capture = referee_section(run_dir / SERIES_DIR, probe, windows, stop_s)
    outage = outage_section(
        events,
        probe,
        requests,
        answered(requests, errors),
        windows,
        scenario["load"]["sla_ms"],
        recorded.migration.downtime_reported_ms,
        capture.model_dump() if capture is not None else None,
    )
    kept = {name: getattr(recorded, name) for name in Recorded.model_fields}
    if recorded.fault is not None:
        kept["fault"] = fault_effect(recorded.fault, recorded.verification, probe, windows)
    else:
        del kept["fault"]  # absent without one
    result = Result(
        **kept,
        phases=phases_section(recorded.events, windows),
        service=service_section(
            probe,
            requests,
            errors,
            windows,
            scenario["load"]["probe_interval_ms"],
            scenario["load"]["sla_ms"],
        ),
        outage=Outage.model_validate(outage),
        resources=resources_section(
            series["processes"],
            series["threads"],
            series["links"],
            windows,
            scenario["measure"]["resource_interval_ms"],
        ),
        data=data_section(progress, recorded.migration.guest_ram_bytes),
        prediction=prediction_section(recorded),
        checks=[],
    )
    result.checks = consistency_checks(result)
    return result
