"""The drain's own view of the hosts: one resource sampler over every hypervisor host and the
storage host (DRAIN_DIR/series/, rows named after the testbed's hosts), and each guest's share
of it, cut out for its own result.

Why one sampler: a lane's sampler would measure whole hosts anyway (the source's CPU and
uplink carry every guest still on it), n of them would read the same /proc n times over, and a
lane's destination is only known at its release. So the lanes sample nothing; once the drain
is over each lane gets the rows of its own source, destination and storage host, renamed to the
roles it sees them in (source, destination, storage), within its own run, and is re-analysed:
its result.json then bills whole hosts exactly as a single run's does.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

from vmigrate.measure.recorder import SERIES_DIR, Recorder
from vmigrate.measure.resources import ResourceSampler, WatchedHost
from vmigrate.testbed.testbed import Testbed

#: The host series, and the columns that tell one counter from another in each.
HOST_SERIES = {"processes": ("host", "pid"), "threads": ("host", "pid", "tid"), "links": ("host",)}


def drain_sampler(testbed: Testbed, out_dir: Path, interval_s: float) -> ResourceSampler:
    """A sampler (not started) of every hypervisor host and the storage host of `testbed`,
    each under its own name, writing into out_dir/series/."""
    names = [*testbed.hypervisor_roles, "storage"]
    hosts = [
        WatchedHost(name, testbed.hosts[name].netns, testbed.hosts[name].uplink) for name in names
    ]
    return ResourceSampler(hosts, Recorder(out_dir), interval_s)


def cut_for_lane(
    drain_dir: Path, lane_dir: Path, roles: Mapping[str, str], window_ns: tuple[int, int]
) -> int:
    """Write the lane's host series: the drain's rows of the hosts in `roles` (testbed host →
    the role the lane sees it in), renamed, sampled within `window_ns` (each counter's sample
    either side kept, so totals over the lane's windows lose nothing). The rows written."""
    written = 0
    for name, keys in HOST_SERIES.items():
        source = drain_dir / SERIES_DIR / f"{name}.csv"
        if not source.exists():
            continue
        with open(source, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = cut_rows(reader, header or [], keys, roles, window_ns) if header else []
        if header is None:
            continue
        target = lane_dir / SERIES_DIR / f"{name}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        written += len(rows)
    return written


def cut_rows(
    rows: Iterable[list[str]],
    header: list[str],
    keys: tuple[str, ...],
    roles: Mapping[str, str],
    window_ns: tuple[int, int],
) -> list[list[str]]:
    """The rows of the hosts in `roles` within the window, renamed, in time order; of each
    counter (`keys`: the columns naming it) also its last sample before the window and its
    first after it."""
    t_at, host_at = header.index("t_ns"), header.index("host")
    key_at = [header.index(key) for key in keys]
    start, end = window_ns
    before: dict[tuple[str, ...], list[str]] = {}
    after_seen: set[tuple[str, ...]] = set()
    kept: list[list[str]] = []
    for row in rows:
        role = roles.get(row[host_at])
        if role is None:
            continue
        t_ns = float(row[t_at])
        renamed = [*row[:host_at], role, *row[host_at + 1 :]]
        key = tuple(renamed[i] for i in key_at)
        if t_ns < start:
            before[key] = renamed
        elif t_ns <= end:
            kept.append(renamed)
        elif key not in after_seen:
            after_seen.add(key)
            kept.append(renamed)
    out = [*before.values(), *kept]
    out.sort(key=lambda row: float(row[t_at]))
    return out
