"""The report page of one run: RUN/report.html from RUN/result.json and RUN/series."""

from __future__ import annotations

from pathlib import Path

import plotly.offline

from vmigrate.report.html.formatting import esc, plain
from vmigrate.report.html.header import cards_html, checks_html, header_html, preflight_html
from vmigrate.report.html.outage import outage_html
from vmigrate.report.html.sections import (
    data_html,
    migration_html,
    resources_html,
    run_details_html,
    service_html,
    verification_html,
)
from vmigrate.report.html.style import ACTION_LINE, CSS, MOMENTS, WINDOW_FILL
from vmigrate.report.html.timeline import timeline_html
from vmigrate.result import Result, load_result

REPORT_FILE = "report.html"


def _timeline_section(fragment: str, result: Result) -> str:
    """The figure under a key to its shaded windows and vertical moment lines."""
    windows = result.phases.windows_s
    swatches = "".join(
        f'<span class="swatch" style="background:{swatch}"></span>{name}'
        + (
            f' <span class="muted">{plain(span[0], 2)}&ndash;{plain(span[1], 2)} s</span>'
            if (span := windows.get(name)) is not None
            else ""
        )
        for name, (_, swatch) in WINDOW_FILL.items()
    )
    moments = "".join(
        f'<span class="swatch" style="background:{colour};height:3px;border:0"></span>{label}'
        + (
            f' <span class="muted">+{plain(at, 3)} s</span>'
            if (at := getattr(result.phases, key)) is not None
            else ""
        )
        for key, label, colour, _ in MOMENTS
    )
    actions = "".join(
        f'<span class="swatch" style="background:{ACTION_LINE[0]};height:3px;border:0"></span>'
        f'{esc(a.action)} <span class="muted">{plain(a.t_s, 2)} s</span>'
        for a in result.migration.actions
    )
    actions_note = (
        f'<div class="legend-note">orchestrator actions:{actions}</div>' if actions else ""
    )
    return (
        '<section id="timeline"><h2>Time line <span class="muted small">drag to zoom, '
        "double-click to reset; every panel shares the time axis (seconds since the run "
        "started)</span></h2>"
        f'<div class="legend-note">windows:{swatches}</div>'
        f'<div class="legend-note">moments, after the migration started:{moments}</div>'
        f"{actions_note}{fragment}</section>"
    )


def render_html(run_dir: Path, result: Result) -> str:
    """The whole page as a string (plotly.js inlined)."""
    banner, checks = checks_html(result)
    name = result.scenario.get("name", "run")
    body = (
        header_html(result, run_dir)
        + banner
        + cards_html(result)
        + checks
        + preflight_html(result)
        + outage_html(result)
        + _timeline_section(timeline_html(run_dir, result), result)
        + '<div class="sections3">'
        + migration_html(result)
        + data_html(result)
        + verification_html(result)
        + "</div>"
        + service_html(result)
        + resources_html(result)
        + run_details_html(result)
    )
    plotly_js = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>vmigrate · {esc(name)} · {esc(result.outcome.value)}</title>"
        f"<style>{CSS}</style>"
        f"<script>{plotly_js}</script>"
        f"</head><body><main>{body}"
        f"<footer>vmigrate report of {esc(run_dir.name)} · figures from result.json, time line "
        "from series/*.csv</footer></main></body></html>\n"
    )


def render_report(run_dir: Path, result: Result | None = None) -> Path:
    """Write RUN/report.html from `result` (default: RUN/result.json) and RUN/series; return
    its path.

    :raise UsageError: no `result` given and RUN/result.json does not load."""
    page = render_html(run_dir, result if result is not None else load_result(run_dir))
    path = run_dir / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
