"""What every section of a scenario is: a frozen pydantic model that refuses unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A scenario section: frozen, and strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)
