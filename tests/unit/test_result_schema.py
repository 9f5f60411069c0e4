"""docs/result.schema.json is generated from the Result model, and says what the model says."""

from __future__ import annotations

import time
from pathlib import Path

import jsonschema
import pytest
from test_result import completed_record, result_of

from vmigrate.analysis import analyze
from vmigrate.result.schema import SCHEMA_PATH, render, result_schema

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "result.schema.json"


def test_the_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_PATH == COMMITTED
    assert COMMITTED.read_text() == render(), (
        "docs/result.schema.json differs from the Result model: regenerate it with "
        "`make schema` (python -m vmigrate.result.schema) and commit it"
    )


def test_the_schema_is_valid_and_strict() -> None:
    schema = result_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert {"migration", "service", "outage", "checks"} <= set(schema["required"])
    assert "fault" not in schema["required"]  # written only when a fault was injected
    defs = schema["$defs"]
    # a nullable figure is one type list with its bound, not an anyOf
    downtime = defs["MigrationFigures"]["properties"]["downtime_reported_ms"]
    assert downtime["type"] == ["number", "null"] and downtime["minimum"] == 0
    assert defs["Outcome"]["enum"] == ["completed", "failed", "cancelled", "timeout", "vm_lost"]
    assert not any("title" in d for d in defs.values())


@pytest.mark.parametrize(
    ("key", "value"),
    [("downtime_reported_ms", -1.0), ("transferred_bytes", "12"), ("iterations", 2.5)],
)
def test_the_schema_refuses_a_bad_figure(tmp_path: Path, key: str, value: object) -> None:
    t0 = time.monotonic_ns()
    document = analyze(tmp_path, result_of(completed_record(t0), t0)).model_dump(mode="json")
    jsonschema.validate(document, result_schema())
    document["migration"][key] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, result_schema())
