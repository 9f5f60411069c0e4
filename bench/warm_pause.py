"""A control for the switch-over's tail (issue 11): after a migration the guest is slow to answer
for tens of ms. Is that because it paused, or because it now runs in a new QEMU whose TCG has
translated none of its code yet? Each demo run here also pauses the source VM for PAUSE_S
(QMP stop, then cont: the same QEMU, its translated code kept) 1.5 s before it migrates, and
compares, after each resume, the first probe reply and the first HTTP response."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from bench.console import bench_console
from vmigrate.config import load_scenario
from vmigrate.experiment import SilentObserver, run_experiment
from vmigrate.hypervisor.base import EventKind
from vmigrate.hypervisor.qemu import QemuDomain
from vmigrate.measure.client_records import read_probe, read_requests
from vmigrate.result import Result
from vmigrate.stats import median_or_none
from vmigrate.testbed.testbed import Testbed

REPETITIONS = 3
PAUSE_S = 0.02
DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.toml"


@contextmanager
def paused_before_migrating(marks: list[tuple[int, int]]) -> Iterator[None]:
    """While active, every migration's source first pauses for PAUSE_S; (stop, cont) times go
    to `marks` (monotonic ns)."""
    original = QemuDomain.start_migration

    async def start_migration(self: QemuDomain, uri: str) -> None:
        stopped = time.monotonic_ns()
        await self.execute("stop")
        await asyncio.sleep(PAUSE_S)
        await self.execute("cont")
        marks.append((stopped, time.monotonic_ns()))
        await asyncio.sleep(1.5)
        await original(self, uri)

    QemuDomain.start_migration = start_migration  # type: ignore[method-assign]
    try:
        yield
    finally:
        QemuDomain.start_migration = original  # type: ignore[method-assign]


def _first_after(times: np.ndarray, after_ns: float) -> float | None:
    later = times[times >= after_ns]
    return float((later.min() - after_ns) / 1e6) if len(later) else None


def recovery(run_dir: Path, result: Result, pause: tuple[int, int]) -> dict[str, Any]:
    """ms from each resume to the first probe reply and the first HTTP response, and each
    outage's length as the probe saw it."""
    probe = read_probe(run_dir / "series" / "probe.csv")
    requests = read_requests(run_dir / "series" / "requests.csv")
    replies = np.sort(probe.recv_ns[~np.isnan(probe.recv_ns)])
    responses = requests.done_ns[(requests.status == 200) & ~np.isnan(requests.done_ns)]
    t0 = result.clock.t0_ns
    resumed = [e.t_s for e in result.events if e.host == "destination"
               and e.event == EventKind.RESUMED]  # fmt: skip
    moved_ns = t0 + min(resumed) * 1e9 if resumed else float("nan")
    gap = np.diff(replies)
    around_pause = (replies[:-1] <= pause[1]) & (replies[1:] >= pause[0])
    return {
        "pause_ms": (pause[1] - pause[0]) / 1e6,
        "pause_probe_outage_ms": float(gap[around_pause].max() / 1e6)
        if around_pause.any()
        else None,
        "pause_first_reply_ms": _first_after(replies, pause[1]),
        "pause_first_response_ms": _first_after(responses, pause[1]),
        "blackout_ms": result.outage.blackout_ms if result.outage else None,
        "network_outage_ms": result.outage.network_outage_ms if result.outage else None,
        "moved_first_reply_ms": _first_after(replies, moved_ns),
        "moved_first_response_ms": _first_after(responses, moved_ns),
    }


ROWS = (
    ("the pause / the blackout (ms)", "pause_ms", "blackout_ms"),
    ("the probe's outage (ms)", "pause_probe_outage_ms", "network_outage_ms"),
    ("resume → first probe reply (ms)", "pause_first_reply_ms", "moved_first_reply_ms"),
    ("resume → first HTTP response (ms)", "pause_first_response_ms", "moved_first_response_ms"),
)


def _median(values: list[Any]) -> str:
    middle = median_or_none([float(v) for v in values if v is not None])
    return f"{middle:.1f}" if middle is not None else "—"


def main() -> None:
    scenario = load_scenario(DEMO, [])
    bed = Testbed("vmigb")
    bed.up(scenario.network.bandwidth_mbit)
    found = []
    try:
        for _ in range(REPETITIONS):
            marks: list[tuple[int, int]] = []
            with tempfile.TemporaryDirectory(prefix="vmigrate-bench-") as tmp:
                with paused_before_migrating(marks):
                    result = run_experiment(scenario, Path(tmp), bed, SilentObserver())
                found.append(recovery(Path(tmp), result, marks[0]))
    finally:
        bed.down()
    table = Table(
        title=f"warm pause vs switch-over: the demo, median of {len(found)} runs "
        "(paused: same QEMU, translated code kept; moved: a new QEMU, nothing translated)"
    )
    for column in ("", "paused in place", "moved (switch-over)"):
        table.add_column(column, justify="right" if column else "left")
    for label, paused, moved in ROWS:
        table.add_row(
            label, _median([f[paused] for f in found]), _median([f[moved] for f in found])
        )
    bench_console().print(table)


if __name__ == "__main__":
    main()
