"""What every section of result.json shares: one strict base model, the number types its
figures use, and the {during, extra} pair most cost figures come as."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

#: A figure that is an int or a float as it was measured (kept as it came: 4 stays 4, 4.0 stays
#: 4.0), described as a JSON number.
Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
#: The same, never below zero.
NonNegNumber = Annotated[int | float, Field(ge=0), WithJsonSchema({"type": "number", "minimum": 0})]
NonNegFloat = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]


def absent(value: object) -> bool:
    """For `exclude_if`: a key written only when it has a value (None: the key is left out)."""
    return value is None


class Section(BaseModel):
    """A part of result.json. Unknown keys are refused (a misspelt figure is an error, not a
    silent extra); every field is written, so the generated schema requires it, even the
    fields with a default: their defaults are there to read documents older than the field."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_serialization_defaults_required=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class WindowFigures(Section):
    """A counter's total over the migration window, and what it adds to the baseline."""

    during: float | None = Field(description="total over the migration window")
    extra: float | None = Field(
        description="during minus what the baseline rate predicts for the same duration"
    )
