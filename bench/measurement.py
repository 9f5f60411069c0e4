"""Benchmarks of the measurement itself (issue: fidelity, overhead, load generator accuracy).

- fidelity: with no migration, pause the guest via QMP stop/cont for 100, 300 and 1000 ms and
  compare the outage the client-side probe measured with the injected one;
- overhead: CPU per second used by the samplers, the probe and the load generator at 100 and
  500 req/s;
- accuracy: achieved vs requested request rate at 100, 500 and 1000 req/s, and how late
  requests left relative to their intended send time.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from bench.console import bench_console
from vmigrate.analysis.service import observed_downtime
from vmigrate.config import validate_scenario
from vmigrate.experiment import Experiment, SilentObserver
from vmigrate.hypervisor.base import EventKind
from vmigrate.measure.client_records import read_probe, read_requests
from vmigrate.pids import process_start_ticks
from vmigrate.stats import nearest_rank
from vmigrate.testbed.testbed import Testbed

PAUSES_MS = (100, 300, 1000)
OVERHEAD_RATES = (100, 500)
ACCURACY_RATES = (100, 500, 1000)
LOAD_SECONDS = 10.0
CLK_TCK = 100


def _cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _experiment(bed: Testbed, out: Path, rate_rps: float) -> Experiment:
    scenario = validate_scenario(
        {"name": "bench", "vm": {"accel": "tcg"}, "load": {"rate_rps": rate_rps}}
    )
    return Experiment(scenario, out, bed, SilentObserver())


async def fidelity(bed: Testbed, out: Path) -> list[tuple[int, float, float | None, int]]:
    """(requested ms, injected ms, measured ms, probe interval ms) for each pause.

    The injected pause is what QEMU executed: from its STOP event to its RESUME event, by the
    events' own timestamps (the QMP round trips and the sleep's overshoot are not in it).
    """
    exp = _experiment(bed, out, 0)
    rows = []
    async with exp.session() as config:
        source = await exp.boot_source(config)
        await exp.start_clients()
        await asyncio.sleep(1.0)
        windows = []
        for pause_ms in PAUSES_MS:
            start = time.monotonic_ns()
            await source.pause()
            await asyncio.sleep(pause_ms / 1000)
            await source.resume()
            windows.append((pause_ms, start, time.monotonic_ns()))
            await asyncio.sleep(1.0)
        await exp.stop_clients()
        events = source.drain_events()
    stops = [e.emitted_s for e in events if e.kind == EventKind.STOPPED and e.emitted_s is not None]
    resumes = [
        e.emitted_s for e in events if e.kind == EventKind.RESUMED and e.emitted_s is not None
    ]
    probe = read_probe(exp.recorder.path("probe"))
    for (pause_ms, start, end), stop_s, resume_s in zip(windows, stops, resumes, strict=True):
        gap, _, _, _ = observed_downtime(
            probe.send_ns.astype(float), probe.recv_ns.astype(float), (start, end)
        )
        rows.append((pause_ms, (resume_s - stop_s) * 1000, gap, 1))
    return rows


async def load_run(bed: Testbed, out: Path, rate_rps: float) -> dict[str, float]:
    """Run the load for LOAD_SECONDS; CPU of every measuring part and the rate achieved."""
    exp = _experiment(bed, out, rate_rps)
    figures: dict[str, float] = {}
    async with exp.session() as config:
        await exp.boot_source(config)
        assert exp.sampler is not None
        sampler_before = exp.sampler.cpu_s
        await exp.start_clients()
        pids = {kind: client.pid for kind, client in exp.clients.items()}
        before = {kind: _cpu_s(pid) for kind, pid in pids.items()}
        started = time.monotonic()
        await asyncio.sleep(LOAD_SECONDS)
        wall = time.monotonic() - started
        for kind, pid in pids.items():
            if process_start_ticks(pid) is not None:
                figures[f"{kind}_cpu_pct"] = 100 * (_cpu_s(pid) - before[kind]) / wall
        figures["sampler_cpu_pct"] = 100 * (exp.sampler.cpu_s - sampler_before) / wall
        await exp.stop_clients()
    requests = read_requests(exp.recorder.path("requests"))
    intended = requests.intended_ns
    span_s = (intended.max() - intended.min()) / 1e9 if len(intended) > 1 else 0.0
    figures["achieved_rps"] = (len(intended) - 1) / span_s if span_s else 0.0
    lag_ms = (requests.sent_ns - intended) / 1e6
    lag_ms = lag_ms[~np.isnan(lag_ms)]
    figures["send_lag_p99_ms"] = nearest_rank(lag_ms, 99.0)
    return figures


def main() -> None:
    console = bench_console()
    bed = Testbed("vmigb")
    bed.up(1000)
    try:
        with tempfile.TemporaryDirectory(prefix="vmigrate-bench-") as tmp:
            pauses = asyncio.run(fidelity(bed, Path(tmp) / "fidelity"))
            loads = {
                rate: asyncio.run(load_run(bed, Path(tmp) / f"load{rate}", rate))
                for rate in sorted(set(OVERHEAD_RATES) | set(ACCURACY_RATES))
            }
    finally:
        bed.down()
    table = Table(title="fidelity: injected pause (QMP stop/cont) vs outage the probe measured")
    for column in ("requested ms", "injected ms", "measured ms", "error ms", "allowed ±ms"):
        table.add_column(column, justify="right")
    for requested, injected, measured, interval in pauses:
        error = f"{measured - injected:+.1f}" if measured is not None else "—"
        shown = f"{measured:.1f}" if measured is not None else "—"
        table.add_row(str(requested), f"{injected:.1f}", shown, error, f"{interval + 2}")
    console.print(table)
    table = Table(title=f"load generator and samplers, {LOAD_SECONDS:g} s per rate")
    columns = ("requested rps", "achieved rps", "send lag p99 ms", "load CPU %",
               "probe CPU %", "sampler CPU %", "total CPU %")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for rate, f in loads.items():
        total = f.get("load_cpu_pct", 0) + f.get("probe_cpu_pct", 0) + f["sampler_cpu_pct"]
        table.add_row(
            str(rate), f"{f['achieved_rps']:.1f}", f"{f['send_lag_p99_ms']:.2f}",
            f"{f.get('load_cpu_pct', 0):.1f}", f"{f.get('probe_cpu_pct', 0):.1f}",
            f"{f['sampler_cpu_pct']:.1f}", f"{total:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print("CPU % is of one core; the probe sends every 1 ms throughout.")
