"""How the HTML reports look: the CSS, and the colours and line styles of hosts, windows
and moments."""

from __future__ import annotations

WINDOW_NAMES = ("baseline", "during", "after")

HOST_COLOURS = {
    "source": "#1f6feb",
    "destination": "#e8590c",
    "storage": "#2f9e44",
    "client": "#8250df",
}
SPARE_COLOURS = ("#c2255c", "#0c8599", "#5c940d", "#862e9c", "#495057")
CLASS_DASH = {"vcpu": "dash", "migration": "dot", "main": "dashdot", "other": "longdash"}
WINDOW_FILL = {  # band on the plot, swatch in the legend line above it
    "baseline": ("rgba(31, 111, 235, 0.07)", "rgba(31, 111, 235, 0.25)"),
    "during": ("rgba(245, 159, 0, 0.16)", "rgba(245, 159, 0, 0.45)"),
    "after": ("rgba(47, 158, 68, 0.08)", "rgba(47, 158, 68, 0.3)"),
}
MOMENTS = (  # phases.* key, label, colour, dash
    ("stop_and_copy_s", "stop-and-copy", "#d1242f", "dash"),
    ("resume_on_destination_s", "resumed on destination", "#8250df", "dash"),
    ("completion_s", "completed", "#1a7f37", "dot"),
)
ACTION_LINE = ("#bf8700", "dashdot")  # what the orchestrator did (stall, post-copy, restart)
OUTCOME_CLASS = {"completed": "ok", "failed": "fail", "timeout": "fail", "cancelled": "warn"}


CSS = """
:root { --ok:#1a7f37; --ok-bg:#dafbe1; --fail:#d1242f; --fail-bg:#ffebe9; --na:#6e7781;
  --na-bg:#eaeef2; --warn:#9a6700; --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1560px; margin: 0 auto; padding: 16px 20px 40px; }
header { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; }
.title { display: flex; align-items: center; gap: 14px; }
h1 { font-size: 24px; margin: 0; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: var(--muted); }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; margin-top: 8px; }
.muted { color: var(--muted); font-weight: normal; }
.small { font-size: 12px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 600;
  font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.badge.outcome { font-size: 14px; padding: 3px 14px; }
.badge.ok, .badge.check-ok { background: var(--ok); color: #fff; }
.badge.fail, .badge.check-fail { background: var(--fail); color: #fff; }
.badge.warn { background: var(--warn); color: #fff; }
.badge.check-na { background: var(--na); color: #fff; }
.error { margin-top: 10px; background: var(--fail-bg); border: 1px solid #ff8182;
  border-radius: 6px; padding: 8px 12px; color: #82071e; }
.error pre { margin: 4px 0 0; white-space: pre-wrap; font-size: 13px; }
.banner { margin-top: 12px; background: var(--fail-bg); border: 1px solid #ff8182; color: #82071e;
  border-radius: 8px; padding: 10px 14px; font-size: 15px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px;
  margin-top: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .05em; }
.card .v { font-size: 20px; font-weight: 650; margin: 2px 0; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.card .sub { color: var(--muted); font-size: 12px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px;
  margin-top: 14px; }
.sections3 { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr));
  gap: 0 14px; align-items: start; }
.cols3 { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr));
  gap: 4px 28px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 5px 10px; border-bottom: 1px solid #eaeef2; text-align: left;
  vertical-align: top; }
table.kv th { font-weight: normal; color: var(--muted); width: 48%; }
table.kv td { font-variant-numeric: tabular-nums; }
table.compact th, table.compact td { padding: 2px 8px; font-size: 12px; }
table.grid thead th { font-size: 12px; color: var(--muted); font-weight: 600;
  border-bottom: 2px solid var(--line); }
table.numbers td, table.numbers th { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
table.numbers td:first-child, table.numbers th:first-child { text-align: left; }
table.hosts td { white-space: normal; }
table.hosts th:not(:first-child) { text-transform: capitalize; }
.extra { display: block; color: var(--muted); font-size: 12px; }
.yes { color: var(--ok); font-weight: 600; }
.no { color: var(--fail); font-weight: 600; }
tr.check-ok td:first-child { border-left: 4px solid var(--ok); }
tr.check-fail { background: var(--fail-bg); }
tr.check-fail td:first-child { border-left: 4px solid var(--fail); }
tr.check-na td:first-child { border-left: 4px solid var(--na); }
tr.check-na { color: var(--muted); }
table.checks td:first-child { width: 70px; }
.chip { display: inline-block; background: var(--bg); border: 1px solid #eaeef2; border-radius: 6px;
  padding: 1px 8px; margin: 2px 4px 2px 0; font-size: 12px; font-variant-numeric: tabular-nums; }
tr.check-fail .chip { background: #fff; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
#timeline { padding: 10px 8px 4px; }
#timeline h2, #timeline .legend-note { margin-left: 10px; }
.legend-note { color: var(--muted); font-size: 12px; margin-bottom: 4px; }
.swatch { display: inline-block; width: 14px; height: 10px; border-radius: 2px;
  margin: 0 4px 0 12px; vertical-align: middle; border: 1px solid rgba(0,0,0,.08); }
details summary { cursor: pointer; color: var(--muted); margin-top: 12px; }
footer { color: var(--muted); font-size: 12px; margin-top: 16px; text-align: center; }
.waterfall { display: block; margin-top: 10px; max-width: 100%; height: auto;
  font-size: 12px; fill: var(--fg, #1f2328); }
.waterfall .wf-grid { stroke: rgba(0,0,0,.10); }
.waterfall .muted { fill: var(--muted); }
"""
