"""The top of the report: header, failed-check banner, headline cards, checks and pre-flight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmigrate.report.html.formatting import TIMES, esc, figure_label, fmt, is_num, num, obj, plain
from vmigrate.report.html.style import OUTCOME_CLASS, WINDOW_NAMES


def header_html(result: dict[str, Any], run_dir: Path) -> str:
    """Scenario name, coloured outcome, strategy, accelerator, start, set-up and the error."""
    scenario = obj(result.get("scenario"))
    env = obj(result.get("environment"))
    mig = obj(result.get("migration"))
    outcome = str(result.get("outcome", "unknown"))
    strategy = mig.get("strategy") or obj(scenario.get("migration")).get("strategy")
    accel = env.get("accel") or "?"
    reason = env.get("accel_reason")
    meta = [
        ("strategy", esc(strategy or "—") + (" over TLS" if mig.get("tls") else "")),
        (
            "accelerator",
            esc(accel) + (f' <span class="muted">({esc(reason)})</span>' if reason else ""),
        ),
        ("started", esc(result.get("started_at", "—"))),
        ("run", esc(run_dir.name)),
        ("QEMU", esc(env.get("qemu_version", "—"))),
        ("vmigrate", esc(env.get("tool_version", "—"))),
    ]
    if env.get("backend") == "libvirt":
        meta.insert(1, ("backend", "libvirt " + esc(env.get("libvirt_version", ""))))
    vm = obj(scenario.get("vm"))
    work = obj(scenario.get("workload"))
    net = obj(scenario.get("network"))
    load = obj(scenario.get("load"))
    setup = [
        ("guest", f"{fmt('x_mib', vm.get('memory_mib'))} · {fmt('x', vm.get('vcpus'))} vCPU"),
        (
            "workload",
            esc(work.get("kind", "—"))
            + (
                f" · dirties {fmt('x_mib_s', work.get('dirty_rate_mib_s'))} of "
                f"{fmt('x_mib', work.get('working_set_mib'))}"
                if work.get("kind") == "memory"
                else ""
            ),
        ),
        ("load", fmt("x_rps", load.get("rate_rps"))),
        ("link", fmt("x_mbit_s", net.get("bandwidth_mbit"))),
        ("downtime limit", fmt("x_ms", obj(scenario.get("migration")).get("downtime_limit_ms"))),
    ]
    error = result.get("error")
    error_html = (
        f'<div class="error" id="run-error"><b>error</b> <pre>{esc(error)}</pre></div>'
        if error
        else ""
    )
    return (
        '<header id="header">'
        f'<div class="title"><h1>{esc(scenario.get("name", "run"))}</h1>'
        f'<span class="badge outcome {OUTCOME_CLASS.get(outcome, "warn")}">{esc(outcome)}</span>'
        "</div>"
        '<div class="meta">'
        + "".join(f'<span><span class="muted">{k}</span> <b>{v}</b></span>' for k, v in meta)
        + '</div><div class="meta">'
        + "".join(f'<span><span class="muted">{k}</span> {v}</span>' for k, v in setup)
        + f"</div>{error_html}</header>"
    )


def checks_html(result: dict[str, Any]) -> tuple[str, str]:
    """(banner, section): the banner only when a check is false."""
    checks = [c for c in result.get("checks", []) if isinstance(c, dict)]
    failed = [c for c in checks if c.get("ok") is False]
    banner = ""
    if failed:
        names = ", ".join(str(c.get("name")) for c in failed)
        banner = (
            f'<div class="banner" id="check-banner" role="alert">✗ {len(failed)} of '
            f"{len(checks)} consistency check{'s' if len(checks) != 1 else ''} failed: "
            f"<b>{esc(names)}</b> — a figure below is wrong or the testbed misbehaved.</div>"
        )
    rows = []
    for check in checks:
        ok = check.get("ok")
        cls, word = (
            ("check-ok", "pass")
            if ok is True
            else ("check-fail", "fail")
            if ok is False
            else ("check-na", "n/a")
        )
        figures = obj(check.get("figures"))
        chips = "".join(
            f'<span class="chip"><span class="muted">{esc(figure_label(k))}</span> '
            f"{fmt(k, v)}</span>"
            for k, v in figures.items()
        )
        rows.append(
            f'<tr class="{cls}"><td><span class="badge {cls}">{word}</span></td>'
            f'<td><code>{esc(check.get("name", "?"))}</code><div class="muted small">'
            f"{esc(check.get('detail', ''))}</div></td><td>{chips}</td></tr>"
        )
    summary = (
        f"{sum(c.get('ok') is True for c in checks)} passed · {len(failed)} failed · "
        f"{sum(c.get('ok') is None for c in checks)} not evaluated"
    )
    table = (
        '<table class="grid checks"><thead><tr><th></th><th>check</th><th>figures</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">no checks recorded</p>'
    )
    section = (
        f'<section id="checks"><h2>Checks <span class="muted small">{summary}</span></h2>'
        f"{table}</section>"
    )
    return banner, section


def cards_html(result: dict[str, Any]) -> str:
    """The headline figures, big, above everything else."""
    mig = obj(result.get("migration"))
    svc = obj(result.get("service"))
    lat = obj(svc.get("latency_ms"))
    req = obj(svc.get("requests"))
    sla = obj(svc.get("sla_violations"))
    ram = num(mig.get("guest_ram_bytes"))
    sent = num(mig.get("transferred_bytes"))
    p99 = [num(obj(lat.get(w)).get("p99")) for w in WINDOW_NAMES]
    counts = [req[k] for k in ("errors", "timeouts") if is_num(req.get(k))]
    failed = sum(counts) if counts else None
    cards = [
        (
            "migration time",
            fmt("x_s", mig.get("total_time_s")),
            f"setup {fmt('x_s', mig.get('setup_time_s'))}",
        ),
        (
            "downtime (probe)",
            fmt("x_ms", svc.get("observed_downtime_ms")),
            f"hypervisor reports {fmt('x_ms', mig.get('downtime_reported_ms'))}",
        ),
        (
            "transferred",
            fmt("x_bytes", mig.get("transferred_bytes")),
            f"{plain(sent / ram, 2)} {TIMES} guest RAM" if sent is not None and ram else "",
        ),
        (
            "throughput",
            fmt("x_mbit_s", mig.get("throughput_mbit_s")),
            f"{fmt('x', mig.get('iterations'))} iterations",
        ),
        (
            "latency p99 during",
            fmt("x_ms", p99[1]),
            "baseline " + fmt("x_ms", p99[0]) + " · after " + fmt("x_ms", p99[2]),
        ),
        (
            "over SLA",
            fmt("x", sla.get("over_sla")),
            f"requests slower than {fmt('x_ms', svc.get('sla_ms'))} during the migration",
        ),
        (
            "failed requests",
            fmt("x", failed),
            f"of {fmt('x', req.get('sent'))} · timeouts {fmt('x', req.get('timeouts'))}",
        ),
        (
            "probes lost",
            fmt("x", svc.get("probe_lost")),
            f"of {fmt('x', svc.get('probe_sent'))} sent during the migration",
        ),
    ]
    body = "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div>'
        f'<div class="sub">{sub}</div></div>'
        for k, v, sub in cards
    )
    return f'<div class="cards" id="headline">{body}</div>'


PREFLIGHT_CLASS = {"pass": "check-ok", "warn": "warn", "fail": "check-fail"}


def preflight_html(result: dict[str, Any]) -> str:
    """The pre-flight checks: status, what each found, and the fix for what did not pass."""
    pre = result.get("preflight")
    if not isinstance(pre, dict):
        return ""
    if pre.get("skipped"):
        head = '<span class="muted small">skipped (--skip-preflight)</span>'
    else:
        head = (
            f'<span class="muted small">guest CPU {esc(pre.get("cpu_model"))} · machine '
            f"{esc(pre.get('machine'))}</span>"
        )
    rows = []
    for check in pre.get("checks", []):
        if not isinstance(check, dict):
            continue
        status = str(check.get("status"))
        cls = PREFLIGHT_CLASS.get(status, "check-na")
        fix = (
            f'<div class="small"><b>fix:</b> {esc(check.get("fix"))}</div>'
            if check.get("fix")
            else ""
        )
        rows.append(
            f'<tr class="{cls}"><td><span class="badge {cls}">{esc(status)}</span></td>'
            f"<td><code>{esc(check.get('name', '?'))}</code></td>"
            f"<td>{esc(check.get('message', ''))}{fix}</td></tr>"
        )
    table = (
        '<table class="grid checks"><thead><tr><th></th><th>check</th><th>finding</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else ""
    )
    return f'<section id="preflight"><h2>Pre-flight {head}</h2>{table}</section>'
