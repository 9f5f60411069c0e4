"""Two VMs side by side on one testbed, for real (a drain's lanes, issue 12): guests 1 and 2 boot
together on the source, then migrate together, one to the destination and one to hv3 (QEMU
backend), each lane with its own QEMUs, sockets, ports, meters and result.json; nothing of the
testbed is left once it is down.

Run alone (as root; about two minutes on two cores):
    sudo .venv/bin/pytest tests/integration/test_lanes_real.py -q
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vmigrate.config import validate_scenario
from vmigrate.experiment import Experiment, SilentObserver
from vmigrate.guest.build import build_image
from vmigrate.lane import LaneHooks
from vmigrate.result import Result
from vmigrate.slot import VmSlot
from vmigrate.testbed.guests import GuestNic
from vmigrate.testbed.testbed import Testbed

pytestmark = pytest.mark.timeout(900)

NAME = "vmigl"
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs/result.schema.json").read_text())
LANE = {
    "vm": {"accel": "tcg", "memory_mib": 256},
    "workload": {"kind": "web"},
    "load": {"rate_rps": 20},
    "phases": {"warmup_s": 0, "baseline_s": 1, "after_s": 2},
}
SLOTS = (VmSlot(GuestNic(1), "source", "destination"), VmSlot(GuestNic(2), "source", "hv3"))
BOOT_TIMEOUT_S = 300.0
BASELINE_S = 2.0


@pytest.fixture
def bed() -> Iterator[Testbed]:
    """A testbed of three hypervisor hosts, up for this test alone; down and gone after it."""
    bed = Testbed(NAME, hypervisors=3)
    bed.down()
    bed.up(1000, hypervisors=3)
    seen = bed.processes()
    try:
        yield bed
    finally:
        seen += bed.processes()
        problems = bed.down()
    assert problems == []
    assert bed.leftovers(seen) == []


async def drain(bed: Testbed, out: Path) -> list[Result]:
    """What a drain does: every lane booted at once, a common baseline, all released at once."""
    lanes = [
        Experiment(
            validate_scenario({"name": f"lane{slot.index}", **LANE}),
            out / slot.tag,
            bed,
            SilentObserver(),
            slot=slot,
            shared=True,
        )
        for slot in SLOTS
    ]
    hooks = [LaneHooks() for _ in lanes]
    tasks = [asyncio.create_task(lane.run_lane(h)) for lane, h in zip(lanes, hooks, strict=True)]
    try:
        booted = await asyncio.wait_for(
            asyncio.gather(*(h.wait_booted() for h in hooks)), BOOT_TIMEOUT_S
        )
        assert booted == [True, True], [lane.ctx.error for lane in lanes]
        assert all(lane.hypervisor is not None for lane in lanes)
        start = time.monotonic_ns()
        await asyncio.sleep(BASELINE_S)
        window = (start, time.monotonic_ns())
        for h in hooks:
            h.release(window)
        return list(await asyncio.wait_for(asyncio.gather(*tasks), BOOT_TIMEOUT_S))
    finally:
        for task in tasks:  # a failed assertion above: the lanes stop their VMs
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def migration_window_ns(result: dict[str, Any]) -> tuple[float, float]:
    t0, timeline = result["clock"]["t0_ns"], result["timeline_s"]
    return t0 + timeline["migration_start"] * 1e9, t0 + timeline["migration_end"] * 1e9


def test_two_lanes_boot_together_and_migrate_together_each_with_its_bill(
    bed: Testbed, tmp_path: Path
) -> None:
    build_image()  # the drain builds the image first; the lanes find it in the cache
    results = asyncio.run(drain(bed, tmp_path))
    documents = []
    for slot, result in zip(SLOTS, results, strict=True):
        out = tmp_path / slot.tag
        document = json.loads((out / "result.json").read_text())
        assert document == result.model_dump(mode="json")
        jsonschema.validate(document, SCHEMA)
        documents.append(document)
        assert document["outcome"] == "completed", document["error"]
        env = document["environment"]
        assert (env["guest"], env["source_host"], env["destination_host"]) == (
            slot.index, slot.source_host, slot.destination_host,
        )  # fmt: skip
        ver = document["verification"]
        assert ver["running_on"] == "destination"
        assert ver["service_ok_after"] is True
        assert ver["boot_id_before"] == ver["boot_id_after"]
        assert ver["memory_checksum_ok"] is True
        assert ver["memory_writes_intact"] is True, ver
        assert ver["disk_checksum_ok"] is True, ver
        # Its QEMUs ran on its hosts, with its tap and its QMP sockets.
        destination = bed.hosts[slot.destination_host].netns
        for role, netns in (("source", bed.hosts["source"].netns), ("destination", destination)):
            command = (out / f"qemu-{role}.log").read_text().splitlines()[0]
            assert command.startswith(f"$ ip netns exec {netns} "), command
            assert f"ifname={slot.nic.tap(NAME)}," in command
            assert f"qmp-{role}-{slot.tag}.sock" in command
        # The sampler watched the host that received it, under the name "destination".
        hosts = document["resources"]["hosts"]
        transferred = document["migration"]["transferred_bytes"]
        assert hosts["destination"]["net_rx_bytes"]["during"] >= transferred > 0
        assert "baseline_end" in document["timeline_s"]
        assert document["service"]["probe_sent"] > 0
    # They moved at the same time.
    (start_1, end_1), (start_2, end_2) = (migration_window_ns(d) for d in documents)
    assert max(start_1, start_2) < min(end_1, end_2), "the two migrations did not overlap"
    # Each lane stopped its own QEMUs (the testbed, the drain's, is still up).
    assert not [r for r in bed.state.resources() if r.name.startswith("qemu-")]
    assert bed.is_healthy()
