"""The `checks` section of result.json: figures from independent sources that must agree."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from vmigrate.result.base import Section


class ConsistencyCheck(Section):
    """One physical consistency check; false means a figure of the run is wrong."""

    name: str = Field(description="what must agree, as a sentence in snake_case")
    ok: bool | None = Field(description="null when it could not be evaluated")
    detail: str = Field(description="the rule, in words")
    figures: dict[str, Any] = Field(description="the figures it compared, each with its unit")
