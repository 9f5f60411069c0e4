"""What a fault cost: the service outage it caused (the client's view, from the probe series),
how long until the VM was settled again (running on one host, or known lost), where it ended
and whether it is intact (from the verification)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vmigrate.analysis.service import observed_downtime
from vmigrate.analysis.windows import Windows, finite_or_none
from vmigrate.result.document import Verification
from vmigrate.result.fault import Fault

Array = np.ndarray[Any, Any]


def fault_effect(
    fault: Fault, verification: Verification, probe: dict[str, Array], windows: Windows
) -> Fault:
    """`fault` with its effect: `service_outage_ms` (the longest time the client got no probe
    reply from the fault on), `recovery_ms` (from the fault until the migration was settled:
    the VM runs on one host — moved, rolled back, recovered — or is known lost), where the VM
    ended and whether its memory and disk are intact."""
    effect: dict[str, Any] = {
        "vm_ends_on": verification.running_on,
        "intact": bool(
            verification.memory_checksum_ok
            and verification.memory_writes_intact
            and verification.disk_checksum_ok
        ),
        "service_outage_ms": None,
        "recovery_ms": None,
    }
    send_ns = probe.get("send_ns", np.array([]))
    recv_ns = probe.get("recv_ns", np.array([]))
    if fault.injected_at_s is not None:
        injected_ns = windows.t0_ns + int(fault.injected_at_s * 1e9)
        effect["recovery_ms"] = finite_or_none(max(0.0, (windows.during[1] - injected_ns) / 1e6))
        if len(send_ns):
            gap_ms, _, _, _ = observed_downtime(send_ns, recv_ns, (injected_ns, windows.after[1]))
            effect["service_outage_ms"] = finite_or_none(gap_ms)
    return fault.model_copy(update=effect)
