"""Where vmigrate keeps its files: a cache (guest images) and per-testbed state directories."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Built guest images and downloaded packages; safe to delete. $VMIGRATE_CACHE overrides."""
    return Path(os.environ.get("VMIGRATE_CACHE", "/var/cache/vmigrate"))


def state_root() -> Path:
    """One sub-directory per testbed (state file, disks, logs). $VMIGRATE_STATE overrides."""
    return Path(os.environ.get("VMIGRATE_STATE", "/var/lib/vmigrate/testbeds"))


def model_path() -> Path:
    """The migration model's constants `vmigrate calibrate` fitted. $VMIGRATE_MODEL overrides."""
    return Path(os.environ.get("VMIGRATE_MODEL", "/var/lib/vmigrate/model.json"))
