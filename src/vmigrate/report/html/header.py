"""The top of the report: header, failed-check banner, headline cards, checks and pre-flight."""

from __future__ import annotations

from pathlib import Path

from vmigrate.report.html.formatting import TIMES, esc, figure_label, fmt, obj, plain
from vmigrate.report.html.style import OUTCOME_CLASS, WINDOW_NAMES
from vmigrate.result import Result


def header_html(result: Result, run_dir: Path) -> str:
    """Scenario name, coloured outcome, strategy, accelerator, start, set-up and the error."""
    scenario = result.scenario
    env, mig = result.environment, result.migration
    outcome = result.outcome.value
    strategy = mig.strategy or obj(scenario.get("migration")).get("strategy")
    accel = env.accel or "?"
    reason = env.accel_reason
    meta = [
        ("strategy", esc(strategy or "—") + (" over TLS" if mig.tls else "")),
        (
            "accelerator",
            esc(accel) + (f' <span class="muted">({esc(reason)})</span>' if reason else ""),
        ),
        ("started", esc(result.started_at)),
        ("run", esc(run_dir.name)),
        ("QEMU", esc(env.qemu_version)),
        ("vmigrate", esc(env.tool_version)),
    ]
    if env.backend == "libvirt":
        meta.insert(1, ("backend", "libvirt " + esc(env.libvirt_version or "")))
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
    error = result.error
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


def checks_html(result: Result) -> tuple[str, str]:
    """(banner, section): the banner only when a check is false."""
    checks = result.checks
    failed = [c for c in checks if c.ok is False]
    banner = ""
    if failed:
        names = ", ".join(c.name for c in failed)
        banner = (
            f'<div class="banner" id="check-banner" role="alert">✗ {len(failed)} of '
            f"{len(checks)} consistency check{'s' if len(checks) != 1 else ''} failed: "
            f"<b>{esc(names)}</b> — a figure below is wrong or the testbed misbehaved.</div>"
        )
    rows = []
    for check in checks:
        ok = check.ok
        cls, word = (
            ("check-ok", "pass")
            if ok is True
            else ("check-fail", "fail")
            if ok is False
            else ("check-na", "n/a")
        )
        chips = "".join(
            f'<span class="chip"><span class="muted">{esc(figure_label(k))}</span> '
            f"{fmt(k, v)}</span>"
            for k, v in check.figures.items()
        )
        rows.append(
            f'<tr class="{cls}"><td><span class="badge {cls}">{word}</span></td>'
            f'<td><code>{esc(check.name)}</code><div class="muted small">'
            f"{esc(check.detail)}</div></td><td>{chips}</td></tr>"
        )
    summary = (
        f"{sum(c.ok is True for c in checks)} passed · {len(failed)} failed · "
        f"{sum(c.ok is None for c in checks)} not evaluated"
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


def cards_html(result: Result) -> str:
    """The headline figures, big, above everything else."""
    mig, svc = result.migration, result.service
    req, sla = svc.requests, svc.sla_violations
    ram, sent = mig.guest_ram_bytes, mig.transferred_bytes
    p99 = [latency.p99 if (latency := svc.latency_ms.get(w)) else None for w in WINDOW_NAMES]
    failed = req.errors + req.timeouts
    cards = [
        (
            "migration time",
            fmt("x_s", mig.total_time_s),
            f"setup {fmt('x_s', mig.setup_time_s)}",
        ),
        (
            "downtime (probe)",
            fmt("x_ms", svc.observed_downtime_ms),
            f"hypervisor reports {fmt('x_ms', mig.downtime_reported_ms)}",
        ),
        (
            "transferred",
            fmt("x_bytes", sent),
            f"{plain(sent / ram, 2)} {TIMES} guest RAM" if ram else "",
        ),
        (
            "throughput",
            fmt("x_mbit_s", mig.throughput_mbit_s),
            f"{fmt('x', mig.iterations)} iterations",
        ),
        (
            "latency p99 during",
            fmt("x_ms", p99[1]),
            "baseline " + fmt("x_ms", p99[0]) + " · after " + fmt("x_ms", p99[2]),
        ),
        (
            "over SLA",
            fmt("x", sla.over_sla),
            f"requests slower than {fmt('x_ms', svc.sla_ms)} during the migration",
        ),
        (
            "failed requests",
            fmt("x", failed),
            f"of {fmt('x', req.sent)} · timeouts {fmt('x', req.timeouts)}",
        ),
        (
            "probes lost",
            fmt("x", svc.probe_lost),
            f"of {fmt('x', svc.probe_sent)} sent during the migration",
        ),
    ]
    body = "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div>'
        f'<div class="sub">{sub}</div></div>'
        for k, v, sub in cards
    )
    return f'<div class="cards" id="headline">{body}</div>'


PREFLIGHT_CLASS = {"pass": "check-ok", "warn": "warn", "fail": "check-fail"}


def preflight_html(result: Result) -> str:
    """The pre-flight checks: status, what each found, and the fix for what did not pass."""
    pre = result.preflight
    if pre is None:
        return ""
    if pre.skipped:
        head = '<span class="muted small">skipped (--skip-preflight)</span>'
    else:
        head = (
            f'<span class="muted small">guest CPU {esc(pre.cpu_model)} · machine '
            f"{esc(pre.machine)}</span>"
        )
    rows = []
    for check in pre.checks:
        cls = PREFLIGHT_CLASS.get(check.status, "check-na")
        fix = f'<div class="small"><b>fix:</b> {esc(check.fix)}</div>' if check.fix else ""
        rows.append(
            f'<tr class="{cls}"><td><span class="badge {cls}">{esc(check.status)}</span></td>'
            f"<td><code>{esc(check.name)}</code></td>"
            f"<td>{esc(check.message)}{fix}</td></tr>"
        )
    table = (
        '<table class="grid checks"><thead><tr><th></th><th>check</th><th>finding</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else ""
    )
    return f'<section id="preflight"><h2>Pre-flight {head}</h2>{table}</section>'
