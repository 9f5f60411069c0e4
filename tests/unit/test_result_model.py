"""The Result model: it reads what vmigrate writes and writes it back unchanged (keys, order,
value types), reads documents older than some of its fields, and refuses unknown keys."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from synthetic_run import make_synthetic_run
from test_result import completed_record, result_of

from vmigrate.analysis import analyze
from vmigrate.errors import UsageError
from vmigrate.guest.facts import GuestFacts
from vmigrate.report.result import guest_verification
from vmigrate.result import Result, load_recorded, load_result
from vmigrate.result.outage import Capture, CaptureFailure


def same_text(document: dict[str, Any]) -> None:
    """`document` read into the model and dumped again is the same JSON text."""
    text = json.dumps(document, indent=2)
    again = Result.model_validate(json.loads(text)).model_dump(mode="json")
    assert json.dumps(again, indent=2) == text


def test_a_produced_document_round_trips_exactly(tmp_path: Path) -> None:
    t0 = time.monotonic_ns()
    same_text(analyze(tmp_path, result_of(completed_record(t0), t0)).model_dump(mode="json"))
    same_text(analyze(tmp_path, result_of(None, 0)).model_dump(mode="json"))


def test_the_synthetic_run_loads_with_typed_sections(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "run")
    result = load_result(run)
    assert result.outcome == "completed"
    assert result.outage is not None and result.outage.waterfall_s.stop is not None
    assert result.resources.hosts["source"].net_tx_bytes.during is not None
    assert result.phases.iterations[0].pass_ == 1
    assert result.model_dump(mode="json")["phases"]["iterations"][0]["pass"] == 1
    assert load_recorded(run).clock.t0_ns == result.clock.t0_ns


def test_a_capture_that_could_not_be_read_keeps_its_one_key(tmp_path: Path) -> None:
    t0 = time.monotonic_ns()
    document = analyze(tmp_path, result_of(completed_record(t0), t0)).model_dump(mode="json")
    document["outage"]["capture"] = {"error": "truncated pcap"}
    outage = Result.model_validate(document).outage
    assert outage is not None and isinstance(outage.capture, CaptureFailure)
    same_text(document)
    run = make_synthetic_run(tmp_path / "run")
    synthetic = json.loads((run / "result.json").read_text())
    synthetic["outage"]["capture"] = {
        "network_outage_ms": 300.0, "network_outage_start_s": 17.59,
        "probe_minus_capture_ms": 0.1, "replies_on_wire": 9000, "replies_probe_missed": 0,
        "replies_not_on_wire": 0, "receive_offset_us": {"median": 12.0, "max_abs": 80.0},
        "kernel_dropped": 0, "guest_announce_s": 17.7, "error": None,
    }  # fmt: skip
    outage = Result.model_validate(synthetic).outage
    assert outage is not None and isinstance(outage.capture, Capture)


def test_a_document_older_than_some_fields_still_loads(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "run")
    document = json.loads((run / "result.json").read_text())
    for key in ("tls", "postcopy_pauses", "hypervisor_report"):
        del document["migration"][key]
    for host in document["resources"]["hosts"].values():
        del host["migration_cpu_seconds"], host["vcpu_cpu_seconds"]
    del document["outage"], document["prediction"], document["preflight"]
    del document["environment"]["backend"]
    result = Result.model_validate(document)
    assert result.migration.tls is False and result.migration.postcopy_pauses == []
    assert result.outage is None and result.prediction is None
    assert result.resources.hosts["source"].migration_cpu_seconds.extra is None


def test_unknown_keys_are_refused_except_in_open_parts(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "run")
    document = json.loads((run / "result.json").read_text())
    document["environment"]["kernel_of_the_host"] = "6.1"  # environment is open
    document["events"][0]["data"]["anything"] = 1  # and so is an event's data
    Result.model_validate(document)
    document["migration"]["downtime"] = 12
    with pytest.raises(ValidationError, match="downtime"):
        Result.model_validate(document)
    (run / "result.json").write_text(json.dumps(document))
    with pytest.raises(UsageError, match=r"migration\.downtime"):
        load_result(run)


def test_the_testbed_verification_compares_the_guest_before_and_after() -> None:
    before = GuestFacts(boot_id="b1", service_ok=True, checksum="c1")
    after = GuestFacts(
        boot_id="b1",
        service_ok=True,
        checksum="c1",
        pages_checked=64,
        pages_mismatched=0,
        disk_blocks_checked=8,
        disk_blocks_mismatched=0,
    )
    verification = guest_verification(before, after, "destination", "postmigrate")
    assert verification.service_ok_after and verification.memory_checksum_ok
    assert verification.memory_writes_intact and verification.disk_checksum_ok
    assert verification.model_dump()["boot_id_after"] == "b1"
    # a guest that never answered: nothing compared, and no key for what it never said
    silent = guest_verification(GuestFacts(), GuestFacts(), "none", None)
    assert silent.memory_checksum_ok is False and silent.service_ok_after is False
    assert "boot_id_before" not in silent.model_dump()
