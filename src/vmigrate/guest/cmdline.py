"""The kernel command line: the vmigrate.* keys init.sh reads to configure the guest."""

from __future__ import annotations

import re
from collections.abc import Iterable

WORKLOADS: tuple[str, ...] = ("idle", "web", "memory")


def _number(value: float) -> str:
    """A number as init.sh passes it on: integers without a fraction, floats exactly."""
    as_float = float(value)
    return str(int(as_float)) if as_float.is_integer() else repr(as_float)


def kernel_cmdline(
    ip_cidr: str,
    *,
    workload: str = "idle",
    working_set_mib: int = 64,
    dirty_rate_mib_s: float = 0,
    integrity_mib: int = 32,
    gateway: str | None = None,
    extra: Iterable[str] = (),
) -> str:
    """The -append string init.sh understands (console on ttyS0, agent options as keys)."""
    if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", ip_cidr):
        raise ValueError(f"ip_cidr must look like 10.241.0.100/24, got {ip_cidr!r}")
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    if working_set_mib < 0 or integrity_mib < 0 or dirty_rate_mib_s < 0:
        raise ValueError("working_set_mib, dirty_rate_mib_s and integrity_mib must be >= 0")
    words = [
        "console=ttyS0",
        f"vmigrate.ip={ip_cidr}",
        f"vmigrate.workload={workload}",
        f"vmigrate.working_set_mib={working_set_mib}",
        f"vmigrate.dirty_rate_mib_s={_number(dirty_rate_mib_s)}",
        f"vmigrate.integrity_mib={integrity_mib}",
    ]
    if gateway is not None:
        words.append(f"vmigrate.gw={gateway}")
    words.extend(extra)
    return " ".join(words)


def parse_cmdline(cmdline: str) -> dict[str, str]:
    """The vmigrate.* keys of a kernel command line, as init.sh reads them (last one wins)."""
    keys: dict[str, str] = {}
    for word in cmdline.split():
        if word.startswith("vmigrate.") and "=" in word:
            key, _, value = word.partition("=")
            keys[key.removeprefix("vmigrate.")] = value
    return keys
