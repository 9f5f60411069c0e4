"""Recorded time series → the cost figures of result.json. Reads files only, so it runs (and
is tested) without any VM, and `vmigrate report RUN` can redo it from a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def analyze(run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """`result` (its scenario, timeline, events, migration figures) plus the sections computed
    from RUN/series (and the prediction): phases, service, outage, resources, data, prediction,
    checks."""
    scenario = result["scenario"]
    windows = Windows.from_marks(result["clock"]["t0_ns"], result["timeline_s"])
    probe, _ = load_series(run_dir, "probe")
    requests, request_text = load_series(run_dir, "requests")
    progress, _ = load_series(run_dir, "migration")
    series = {
        name: table(*load_series(run_dir, name)) for name in ("processes", "threads", "links")
    }
    analysed = dict(result)
    analysed["phases"] = phases_section(result["events"], windows)
    analysed["service"] = service_section(
        probe,
        requests,
        request_text.get("error", []),
        windows,
        scenario["load"]["probe_interval_ms"],
        scenario["load"]["sla_ms"],
    )
    stop_s = switchover_moments(result["events"])["stop"]
    analysed["outage"] = outage_section(
        result["events"],
        probe,
        requests,
        answered(requests, request_text.get("error", [])),
        windows,
        scenario["load"]["sla_ms"],
        result["migration"].get("downtime_reported_ms"),
        referee_section(run_dir / SERIES_DIR, probe, windows, stop_s),
    )
    analysed["resources"] = resources_section(
        series["processes"],
        series["threads"],
        series["links"],
        windows,
        scenario["measure"]["resource_interval_ms"],
    )
    analysed["data"] = data_section(progress, result["migration"]["guest_ram_bytes"])
    if "fault" in result:
        analysed["fault"] = {
            **result["fault"],
            **fault_effect(result["fault"], result["verification"], probe, windows),
        }
    analysed["prediction"] = prediction_section(result)
    analysed["checks"] = consistency_checks(analysed)
    return analysed
