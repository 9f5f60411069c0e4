"""The `preflight` section of result.json: the checks run before the guest booted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from vmigrate.result.base import Section

Status = Literal["pass", "warn", "fail"]


class PreflightCheck(Section):
    """One finding: its status, what it found, and (unless it passed) the fix."""

    name: str = Field(
        description="cpu, cpu_baseline, disk_cache, qemu_versions, machine_type, storage, "
        "memory, ports, estimate"
    )
    status: Status = Field(description="fail stops the run (unless --unsafe allows it)")
    message: str = Field(description="what the check found")
    fix: str = Field(description="what to do about it (empty when it passed)")
    figures: dict[str, Any] = Field(description="the numbers behind it, each named with its unit")


class PreflightResult(Section):
    """Every pre-flight check of the run, and what they settled."""

    skipped: bool = Field(description="--skip-preflight: no checks ran")
    unsafe_allowed: bool = Field(description="--unsafe: an unsafe disk cache mode only warns")
    cpu_model_requested: str = Field(description="vm.cpu_model as written (may be 'baseline')")
    cpu_model: str = Field(description="the -cpu the guest ran with (baseline resolved)")
    machine: str = Field(description="the versioned machine type both ends used")
    passed: bool = Field(description="no check failed")
    checks: list[PreflightCheck] = Field(description="in the order they ran")

    def figures_of(self, name: str) -> dict[str, Any] | None:
        """The figures of the check called `name` (None: it did not run, or has none)."""
        for check in self.checks:
            if check.name == name and check.figures:
                return check.figures
        return None
