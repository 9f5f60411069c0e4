"""docs/result.schema.json, generated from the Result model so the two cannot drift.

    python -m vmigrate.result.schema [PATH]     (or: make schema)

The schema describes the document as vmigrate writes it (serialization mode): every key it
always writes is required, unknown keys are refused. Pydantic's output is tidied for people:
no titles or defaults, and a nullable figure as `"type": ["number", "null"]`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import CoreSchema

from vmigrate.result.document import Result

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "docs" / "result.schema.json"
HEADER = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "vmigrate/result.schema.json",
    "title": "vmigrate result.json",
}
# Keywords in the order a reader wants them; the rest follow in pydantic's order.
ORDER = ("$schema", "$id", "title", "$ref", "type", "const", "enum", "description", "minimum",
         "exclusiveMinimum", "required", "additionalProperties", "$defs", "properties",
         "prefixItems", "items", "minItems", "maxItems", "anyOf")  # fmt: skip
DROPPED = ("title", "default")
# Keywords whose value is a map of names to schemas, or one schema, or a list of schemas.
MAPS, ONE, MANY = (
    ("properties", "$defs"),
    ("additionalProperties", "items"),
    ("anyOf", "prefixItems"),
)


class _Generator(GenerateJsonSchema):
    """Pydantic's generator, without a title on every field."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [{type: T, ...}, {type: null}]` as `{type: [T, null], ...}` (same meaning)."""
    options = node.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
        return node
    (other,) = [o for o in options if o != {"type": "null"}]
    if not isinstance(other.get("type"), str) or "const" in other:
        return node
    merged: dict[str, Any] = {k: v for k, v in node.items() if k != "anyOf"} | other
    merged["type"] = [other["type"], "null"]
    if "enum" in other:
        merged["enum"] = [*other["enum"], None]
    return merged


def _tidy(node: Any) -> Any:
    """One schema node, tidied (see the module's docstring), its sub-schemas too."""
    if not isinstance(node, dict):
        return node
    node = _nullable(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED or (key == "additionalProperties" and value is True):
            continue
        if key in MAPS:
            out[key] = {name: _tidy(child) for name, child in value.items()}
        elif key in ONE:
            out[key] = _tidy(value)
        elif key in MANY:
            out[key] = [_tidy(child) for child in value]
        elif key == "description":
            out[key] = " ".join(value.split())  # docstrings come with their line breaks
        else:
            out[key] = value
    rank = {key: i for i, key in enumerate(ORDER)}
    return dict(sorted(out.items(), key=lambda item: rank.get(item[0], len(ORDER))))


def model_schema(model: type[BaseModel], header: dict[str, str]) -> dict[str, Any]:
    """The JSON Schema of a document `model` writes (serialization mode), tidied, `header`
    ($schema, $id, title) first."""
    raw = model.model_json_schema(mode="serialization", schema_generator=_Generator)
    tidied: dict[str, Any] = _tidy(raw)
    return {**header, **tidied}


def result_schema() -> dict[str, Any]:
    """The JSON Schema of result.json, from the Result model."""
    return model_schema(Result, HEADER)


def schema_text(schema: dict[str, Any]) -> str:
    """A schema file's text."""
    return json.dumps(schema, indent=2) + "\n"


def render() -> str:
    """The schema file's text."""
    return schema_text(result_schema())


def write_schema(argv: list[str], default: Path, text: Callable[[], str]) -> int:
    """Write a schema's text to PATH (argv[0], else `default`); the command's exit code."""
    path = Path(argv[0]) if argv else default
    path.write_text(text())
    print(f"wrote {path}")
    return 0


def main(argv: list[str]) -> int:
    """Write the schema to PATH (default: the checkout's docs/result.schema.json)."""
    return write_schema(argv, SCHEMA_PATH, render)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
