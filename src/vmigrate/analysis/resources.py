"""What the migration cost each host: CPU (and QEMU's CPU by thread class), network, disk IO
and memory, during the migration and in excess of the baseline.

Per-process counters are cumulative since each process started; a process seen for the first
time is counted from zero (its start-up is part of the bill), and one that exited keeps what it
used. Host totals are sums over the host's processes on a common time grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from vmigrate.analysis.windows import (
    Array,
    Windows,
    counter_delta,
    finite_or_none,
    value_before,
    window_figures,
)
from vmigrate.result.base import WindowFigures
from vmigrate.result.resources import CpuSeconds, HostResources, Resources, RssBytes

HOSTS = ("source", "destination", "storage")
THREAD_CLASSES = ("vcpu", "migration", "main", "other")
Table = Mapping[str, Array | npt.NDArray[np.object_]]


def table(numeric: Mapping[str, Array], text: Mapping[str, list[str]]) -> dict[str, Any]:
    """One series as a dict of equal-length numpy columns (text columns as object arrays)."""
    out: dict[str, Any] = dict(numeric)
    out.update({name: np.array(values, dtype=object) for name, values in text.items()})
    return out


def _select(rows: Table, mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    return {name: column[mask] for name, column in rows.items()}


def _split(rows: Table, key: str) -> list[dict[str, Any]]:
    """Rows grouped by the value of column `key`, each group sorted by t_ns."""
    if key not in rows or len(rows[key]) == 0:
        return []
    groups = []
    for value in np.unique(rows[key].astype(str)):
        group = _select(rows, rows[key].astype(str) == value)
        order = np.argsort(group["t_ns"], kind="stable")
        groups.append({name: column[order] for name, column in group.items()})
    return groups


def _delta(groups: list[dict[str, Any]], column: str, window: tuple[int, int]) -> float:
    return sum(counter_delta(g["t_ns"], g[column].astype(float), window) for g in groups)


def _figures(
    groups: list[dict[str, Any]], column: str, windows: Windows, digits: int = 3
) -> WindowFigures:
    """{during, extra} of a counter summed over groups; None for both when nothing was sampled."""
    if not groups:
        return WindowFigures(during=None, extra=None)
    return window_figures(
        _delta(groups, column, windows.during),
        _delta(groups, column, windows.baseline),
        windows,
        digits,
    )


def on_grid(groups: list[dict[str, Any]], column: str, grid: Array, cumulative: bool) -> Array:
    """Sum over groups (processes) of one column on `grid`, forward-filled per group.

    Cumulative counters keep their last value after a process is gone; gauges (RSS) drop to 0.
    """
    total = np.zeros(len(grid))
    for group in groups:
        t = group["t_ns"]
        v = group[column].astype(float)
        index = np.searchsorted(t, grid, side="right") - 1
        values = np.where(index >= 0, v[np.clip(index, 0, None)], 0.0)
        if not cumulative:
            values = np.where(grid > t[-1], 0.0, values)
        total += values
    return total


def host_section(
    processes: Table, threads: Table, links: Table, windows: Windows, interval_ms: float
) -> HostResources:
    """The resources of one host, from its rows of the processes, threads and links series."""
    per_pid = _split(processes, "pid")
    base_s = windows.duration_s("baseline")
    cpu_base = _delta(per_pid, "cpu_s", windows.baseline)
    cpu = CpuSeconds(
        **_figures(per_pid, "cpu_s", windows).model_dump(),
        baseline_rate=round(cpu_base / base_s, 4) if base_s > 0 else None,
    )

    step = interval_ms * 1e6
    start, end = windows.baseline[0], windows.after[1]
    grid = np.arange(start, end + step, step, dtype=float)
    cpu_total = on_grid(per_pid, "cpu_s", grid, cumulative=True)
    rates = np.diff(cpu_total) / (step / 1e9) * 100.0
    during_bins = (grid[1:] > windows.during[0]) & (grid[:-1] < windows.during[1])
    peak = float(np.max(rates[during_bins])) if np.any(during_bins) else None

    rss = on_grid(per_pid, "rss_bytes", grid, cumulative=False)
    during_rss = rss[(grid >= windows.during[0]) & (grid <= windows.during[1] + step)]

    per_thread_class: dict[str, WindowFigures] = {}
    if len(threads.get("t_ns", [])):
        for name in THREAD_CLASSES:
            rows = _select(threads, threads["thread_class"] == name)
            per_thread_class[name] = _figures(_split(rows, "tid"), "cpu_s", windows)

    link = _split(links, "host")
    migration_cpu, vcpu_cpu = cpu_split(cpu, per_thread_class.get("vcpu"))
    return HostResources(
        cpu_seconds=cpu,
        migration_cpu_seconds=migration_cpu,
        vcpu_cpu_seconds=vcpu_cpu,
        cpu_pct_peak=finite_or_none(peak, 1),
        qemu_cpu_seconds=per_thread_class,
        net_tx_bytes=_figures(link, "tx_bytes", windows, 0),
        net_rx_bytes=_figures(link, "rx_bytes", windows, 0),
        disk_read_bytes=_figures(per_pid, "read_bytes", windows, 0),
        disk_write_bytes=_figures(per_pid, "write_bytes", windows, 0),
        rss_bytes=RssBytes(
            before=finite_or_none(value_before(grid, rss, windows.during[0] - 1), 0),
            peak=finite_or_none(float(np.max(during_rss)), 0) if len(during_rss) else None,
            after=finite_or_none(value_before(grid, rss, windows.after[1]), 0),
        ),
        processes=sorted({str(n) for n in processes.get("name", [])}),
    )


def cpu_split(
    cpu: WindowFigures, vcpu: WindowFigures | None
) -> tuple[WindowFigures, WindowFigures]:
    """The host's CPU split in two: `migration_cpu_seconds`, the work the migration adds (every
    process and QEMU thread but the guest's vCPUs: migration and multifd threads, QEMU's main
    loop, NBD, the NFS server), and `vcpu_cpu_seconds`, what the guest's vCPUs ran (it drops
    while the VM is paused or moves away). Each {during, extra}; the host total is their sum."""
    if vcpu is None or vcpu.during is None or vcpu.extra is None:
        vcpu = WindowFigures(during=0.0, extra=0.0)
    if cpu.during is None or cpu.extra is None:
        return WindowFigures(during=None, extra=None), vcpu
    during, extra = vcpu.during or 0.0, vcpu.extra or 0.0
    migration = WindowFigures(
        during=round(cpu.during - during, 3), extra=round(cpu.extra - extra, 3)
    )
    return migration, WindowFigures(during=during, extra=extra)


def resources_section(
    processes: Table, threads: Table, links: Table, windows: Windows, interval_ms: float
) -> Resources:
    """The `resources` section: every hypervisor and storage host."""

    def of(rows: Table, host: str) -> dict[str, Any]:
        if "host" not in rows or len(rows["host"]) == 0:
            return {}
        return _select(rows, rows["host"] == host)

    return Resources(
        sample_interval_ms=interval_ms,
        hosts={
            host: host_section(
                of(processes, host), of(threads, host), of(links, host), windows, interval_ms
            )
            for host in HOSTS
        },
    )
