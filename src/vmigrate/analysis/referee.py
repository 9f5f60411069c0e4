"""The probe refereed by the wire: the same echoes, timed by the probe (its socket's receive
timestamps) and by the packet capture on the client host's interface. They must agree on the
network outage within AGREEMENT_MS; the capture also shows what the probe cannot — the
guest's ARP/RARP announcement once it runs on the destination."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmigrate.analysis.service import observed_downtime
from vmigrate.analysis.windows import Array, Windows, finite_or_none
from vmigrate.measure.capture import CAPTURE_FILE, CaptureError, load_meta, read_capture
from vmigrate.result.outage import Capture, CaptureFailure, ReceiveOffset

AGREEMENT_MS = 2.0


def referee_section(
    series_dir: Path, probe: dict[str, Array], windows: Windows, stop_s: float | None
) -> Capture | CaptureFailure | None:
    """The `outage.capture` section (None when the run made no capture). `stop_s`: when the
    source stopped the VM (s since t0): the guest's first ARP/RARP frame after it is the
    destination's announcement (QEMU sends it as it starts the VM, a moment before the
    RESUME event reaches us)."""
    meta = load_meta(series_dir)
    if meta is None:
        return None
    try:
        wire = read_capture(
            series_dir / CAPTURE_FILE, meta.guest_ip, meta.realtime_offset_ns, meta.port
        )
    except CaptureError as exc:
        return CaptureFailure(error=str(exc))
    send = probe.get("send_ns", np.array([]))
    recv = probe.get("recv_ns", np.array([]))
    seq = probe.get("seq", np.arange(len(send), dtype=np.float64))
    on_wire = np.full(len(send), np.nan)
    index = {int(s): i for i, s in enumerate(seq)}
    for s, t in zip(wire.reply_seq, wire.reply_ns, strict=True):
        i = index.get(int(s))
        if i is not None and np.isnan(on_wire[i]):
            on_wire[i] = float(t)
    wire_ms, wire_start, _, _ = observed_downtime(send, on_wire, windows.during)
    probe_ms, _, _, _ = observed_downtime(send, recv, windows.during)
    both = ~np.isnan(recv) & ~np.isnan(on_wire)
    offset_us = (recv[both] - on_wire[both]) / 1e3
    announce = None
    if stop_s is not None:
        guest = [t for t, mac in zip(wire.announce_ns, wire.announce_mac, strict=True)
                 if mac == meta.guest_mac and t >= windows.t0_ns + stop_s * 1e9]  # fmt: skip
        announce = (min(guest) - windows.t0_ns) / 1e9 if guest else None
    differ = probe_ms - wire_ms if probe_ms is not None and wire_ms is not None else None
    return Capture(
        network_outage_ms=finite_or_none(wire_ms),
        network_outage_start_s=finite_or_none(
            (wire_start - windows.t0_ns) / 1e9 if wire_start is not None else None, 6
        ),
        probe_minus_capture_ms=finite_or_none(differ),
        replies_on_wire=int(np.count_nonzero(~np.isnan(on_wire))),
        replies_probe_missed=int(np.count_nonzero(np.isnan(recv) & ~np.isnan(on_wire))),
        replies_not_on_wire=int(np.count_nonzero(~np.isnan(recv) & np.isnan(on_wire))),
        receive_offset_us=ReceiveOffset(
            median=finite_or_none(float(np.median(offset_us))) if len(offset_us) else None,
            max_abs=finite_or_none(float(np.max(np.abs(offset_us)))) if len(offset_us) else None,
        ),
        kernel_dropped=meta.kernel_dropped,
        guest_announce_s=finite_or_none(announce, 6),
        error=None,
    )
