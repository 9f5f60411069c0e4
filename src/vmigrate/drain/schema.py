"""docs/drain.schema.json, generated from the DrainBill model (drain/bill.py) as
docs/result.schema.json is from Result, so the two cannot drift.

    python -m vmigrate.drain.schema [PATH]     (or: make schema)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vmigrate.drain.bill import DrainBill
from vmigrate.result.schema import model_schema, schema_text, write_schema

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "docs" / "drain.schema.json"
HEADER = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "vmigrate/drain.schema.json",
    "title": "vmigrate drain.json",
}


def drain_schema() -> dict[str, Any]:
    """The JSON Schema of drain.json, from the DrainBill model."""
    return model_schema(DrainBill, HEADER)


def render() -> str:
    """The schema file's text."""
    return schema_text(drain_schema())


def main(argv: list[str]) -> int:
    """Write the schema to PATH (default: the checkout's docs/drain.schema.json)."""
    return write_schema(argv, SCHEMA_PATH, render)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
