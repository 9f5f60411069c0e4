"""Fixtures more than one unit test module uses."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmigrate.measure.client import build_client


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private VMIGRATE_CACHE for the whole module, with the client built into it."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMIGRATE_CACHE", str(path))
        build_client()
        yield path
