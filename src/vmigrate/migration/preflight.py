"""Pre-flight: what would make this migration fail, corrupt data or take forever, found before
anything moves. Each check says pass, warn or fail, what is wrong, and what to do about it.

The classic failures it explains: "host CPU does not provide required features" (the guest's
CPU model asks for more than the destination offers; the fix is a baseline model both hosts
offer), "migration is unsafe" (a shared disk cached on the source: the destination could read
stale data), a destination without the memory or the free ports for the VM, QEMU versions or
machine types that differ, and a pre-copy that cannot converge on this link.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmigrate.config import Scenario
from vmigrate.errors import CommandFailed, UsageError
from vmigrate.hypervisor.cpu import BASELINE, CpuCatalog, baseline, missing
from vmigrate.hypervisor.introspect import QEMU_BINARY, machine_types
from vmigrate.proc import run
from vmigrate.result.preflight import PreflightCheck, PreflightResult, Status
from vmigrate.testbed.netns import call_in_netns
from vmigrate.testbed.network import Host
from vmigrate.testbed.testbed import Testbed

HYPERVISORS = ("source", "destination")
SAFE_SHARED_CACHE = ("none", "directsync")
QEMU_OVERHEAD_MIB = 192  # QEMU's own memory beyond guest RAM (TCG translation cache, devices)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Check:
    """One finding: its status, what it found, and (unless it passed) the fix."""

    name: str
    status: Status
    message: str
    fix: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Preflight:
    """Every check of one scenario, and what it settled: the CPU model and machine type."""

    cpu_model_requested: str
    cpu_model: str
    machine: str
    skipped: bool = False
    unsafe_allowed: bool = False
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def section(self) -> PreflightResult:
        """The `preflight` section of result.json."""
        return PreflightResult(
            skipped=self.skipped,
            unsafe_allowed=self.unsafe_allowed,
            cpu_model_requested=self.cpu_model_requested,
            cpu_model=self.cpu_model,
            machine=self.machine,
            passed=not self.failures,
            checks=[PreflightCheck.model_validate(asdict(c)) for c in self.checks],
        )

    def as_dict(self) -> dict[str, Any]:
        return self.section().model_dump(mode="json")


def _offered(scenario: Scenario, catalog: CpuCatalog, role: str) -> frozenset[str]:
    return catalog.offered(scenario.hosts.cpu(role), f"hosts.{role}_cpu")


def _describe_host(scenario: Scenario, catalog: CpuCatalog, role: str) -> str:
    ceiling = scenario.hosts.cpu(role)
    if ceiling:
        return f"{role} (CPU {ceiling})"
    return f"{role} ({'the host CPU' if catalog.accel == 'kvm' else 'all TCG implements'})"


def check_names(scenario: Scenario, catalog: CpuCatalog) -> None:
    """Refuse (UsageError) CPU models, features and machine types QEMU does not know: bad
    input, said in one line before anything is created."""
    for role in HYPERVISORS:
        _offered(scenario, catalog, role)
    if scenario.vm.cpu_model != BASELINE:
        catalog.requested(scenario.vm.cpu_model)
    if scenario.vm.machine not in machine_types(catalog.accel):
        raise UsageError(
            f"vm.machine = {scenario.vm.machine!r} is not a machine type QEMU knows; "
            f"`{QEMU_BINARY} -machine help` lists them (q35 is a good default)"
        )


def settle(scenario: Scenario, catalog: CpuCatalog, unsafe: bool) -> Preflight:
    """Decide the CPU model (resolving "baseline") and pin the machine type; done for every
    run, with or without the checks."""
    check_names(scenario, catalog)
    requested = scenario.vm.cpu_model
    chosen = requested
    checks = []
    if requested == BASELINE:
        offered = [_offered(scenario, catalog, role) for role in HYPERVISORS]
        base = baseline(catalog, offered)
        chosen = base.cpu_model
        hosts = " and ".join(_describe_host(scenario, catalog, r) for r in HYPERVISORS)
        extra = (
            f", plus {', '.join(base.extra_features)} which every host offers beyond it"
            if base.extra_features
            else ""
        )
        beyond = [
            f"{_describe_host(scenario, catalog, role)} offers {len(more)} more "
            f"({', '.join(sorted(more)[:8])}{', ...' if len(more) > 8 else ''}) that not "
            "every host has"
            for role, more in (
                (r, o - base.common_features) for r, o in zip(HYPERVISORS, offered, strict=True)
            )
            if more
        ]
        why = f"; a newer model would not migrate: {'; '.join(beyond)}" if beyond else ""
        checks.append(
            Check(
                "cpu_baseline",
                "pass",
                f"vm.cpu_model = baseline chose {chosen}: the most capable named CPU model "
                f"that {hosts} all offer ({len(base.common_features)} features in common)"
                + extra
                + why,
                figures={"cpu_model": chosen, "common_features": sorted(base.common_features)},
            )
        )
    machine = machine_types(catalog.accel)[scenario.vm.machine]
    return Preflight(requested, chosen, machine, unsafe_allowed=unsafe, checks=checks)


def cpu_check(scenario: Scenario, catalog: CpuCatalog, cpu_model: str) -> Check:
    """The guest's CPU model, expanded to features, against what each host offers."""
    requested = catalog.requested(cpu_model)
    lacking = {role: missing(requested, _offered(scenario, catalog, role)) for role in HYPERVISORS}
    dropped = catalog.dropped(cpu_model) if catalog.accel == "tcg" else []
    note = (
        f" (TCG does not implement {', '.join(dropped)}: dropped on every host alike)"
        if dropped
        else ""
    )
    figures = {"cpu_model": cpu_model, "requested_features": len(requested), "missing": lacking}
    short = {role: features for role, features in lacking.items() if features}
    if short:
        said = "; ".join(
            f"{_describe_host(scenario, catalog, role)}: {', '.join(features)}"
            for role, features in short.items()
        )
        suggestion = baseline(
            catalog, [_offered(scenario, catalog, r) for r in HYPERVISORS]
        ).cpu_model
        return Check(
            "cpu",
            "fail",
            f"host CPU does not provide required features of guest CPU {cpu_model}: {said}",
            f'set vm.cpu_model = "baseline" (here: {suggestion}, which every host offers), '
            "or a model no newer than the oldest host",
            figures,
        )
    hosts = " and ".join(_describe_host(scenario, catalog, r) for r in HYPERVISORS)
    return Check(
        "cpu",
        "pass",
        f"guest CPU {cpu_model} ({len(requested)} features) is offered by {hosts}{note}",
        figures=figures,
    )


def postcopy_risk_check(scenario: Scenario) -> Check:
    """Post-copy splits the VM's memory between both hosts until the copy ends: say so."""
    spec = scenario.migration
    armed = spec.strategy in ("postcopy", "hybrid") or spec.on_stall == "postcopy"
    if not armed:
        return Check(
            "postcopy_risk",
            "pass",
            "no post-copy: the source keeps the whole VM until the switch-over, so a fault "
            "before it leaves the VM running there",
        )
    return Check(
        "postcopy_risk",
        "warn",
        "post-copy: once the VM runs on the destination, pages it has not fetched yet exist "
        "only on the source — if either host dies before the copy ends, the VM is lost (a cut "
        "link can be recovered: the migration pauses until it is back)",
        "keep both hosts up until the migration completes; where losing the VM is not "
        "acceptable, use pre-copy with auto-converge instead",
        {"strategy": spec.strategy, "on_stall": spec.on_stall},
    )


def cache_check(scenario: Scenario, unsafe: bool) -> Check:
    """Shared storage must not be cached on the source: the destination would read stale data."""
    cache = scenario.vm.disk_cache
    figures = {"disk_cache": cache, "storage": scenario.storage.mode}
    if scenario.storage.mode != "shared-nfs" or cache in SAFE_SHARED_CACHE:
        return Check(
            "disk_cache",
            "pass",
            f"disk cache mode {cache} is safe to migrate on {scenario.storage.mode} storage",
            figures=figures,
        )
    message = (
        f"migration is unsafe: the shared disk uses cache={cache}, so writes the source still "
        "holds in its page cache may be missing when the destination reads the disk"
    )
    fix = 'set vm.disk_cache = "none" (or "directsync")'
    if unsafe:
        return Check("disk_cache", "warn", message + " (going ahead: --unsafe)", fix, figures)
    return Check(
        "disk_cache", "fail", message, fix + ", or pass --unsafe to go ahead anyway", figures
    )


def compatibility_checks(
    testbed: Testbed, accel: str, scenario: Scenario, hosts: Mapping[str, Host] | None = None
) -> list[Check]:
    """Both hosts run the same QEMU and know the VM's machine type as the same versioned type.
    `hosts`: the testbed hosts that play the VM's source and destination (None: those two)."""
    hosts = hosts or testbed.hosts
    versions = {}
    for role in HYPERVISORS:
        text = run([QEMU_BINARY, "--version"], netns=hosts[role].netns).stdout
        found = re.search(r"version (\S+)", text)
        versions[role] = found.group(1) if found else text.strip()[:40]
    same = versions["source"] == versions["destination"]
    checks = [
        Check(
            "qemu_versions",
            "pass" if same else "warn",
            f"QEMU {versions['source']} on both hosts"
            if same
            else f"QEMU differs: source {versions['source']}, destination "
            f"{versions['destination']}; a newer QEMU accepts an older one's stream only for "
            "the same versioned machine type",
            "" if same else "pin vm.machine to a versioned type both QEMUs know",
            {"qemu_source": versions["source"], "qemu_destination": versions["destination"]},
        )
    ]
    asked = scenario.vm.machine
    resolved = {role: machine_types(accel, hosts[role].netns) for role in HYPERVISORS}
    pinned = resolved["source"].get(asked)
    on_destination = pinned is not None and pinned in resolved["destination"]
    if pinned is None or not on_destination:
        where = "the source" if pinned is None else "the destination"
        checks.append(
            Check(
                "machine_type",
                "fail",
                f"machine type {asked!r} is unknown to QEMU on {where}",
                f"set vm.machine to a type both know (`{QEMU_BINARY} -machine help`), e.g. q35",
                {"machine": asked},
            )
        )
    else:
        how = f"alias {asked} pinned to {pinned}" if pinned != asked else f"{pinned}"
        checks.append(
            Check(
                "machine_type",
                "pass",
                f"machine type {how}: versioned, and known on both hosts",
                figures={"machine": pinned},
            )
        )
    return checks


def storage_check(
    scenario: Scenario, testbed: Testbed, disk: Path, destination: Host | None = None
) -> Check:
    """Shared: the destination opens the VM's disk read-only over NFS. Local: the destination
    has room for the copy. `destination`: the testbed host that plays it (None: its own)."""
    destination = destination or testbed.hosts["destination"]
    if scenario.storage.mode == "shared-nfs":
        url = testbed.nfs_url(disk)
        try:
            run(["qemu-img", "info", "-U", url], netns=destination.netns, timeout_s=30)
        except CommandFailed as exc:
            return Check(
                "storage",
                "fail",
                f"the destination host cannot open the shared disk {url}: {exc.stderr.strip()}",
                "check the storage host's NFS server (`vmigrate testbed status`) and that the "
                "destination reaches it",
                {"url": url},
            )
        return Check(
            "storage",
            "pass",
            f"the destination host opens the shared disk read-only over NFS ({url})",
            figures={"url": url},
        )
    directory = testbed.local_disk_dir(destination.role)
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    need = int(
        json.loads(run(["qemu-img", "info", "--output=json", str(disk)]).stdout)["virtual-size"]
    )
    figures = {"free_bytes": free, "disk_bytes": need, "directory": str(directory)}
    if free < need:
        return Check(
            "storage",
            "fail",
            f"the destination has {free / MIB:.0f} MiB free in {directory}, the disk copy "
            f"needs {need / MIB:.0f} MiB",
            "free space on the destination, or use shared storage",
            figures,
        )
    return Check(
        "storage",
        "pass",
        f"the destination has room for the disk copy ({free / MIB:.0f} MiB free, "
        f"{need / MIB:.0f} MiB needed)",
        figures=figures,
    )


def memory_check(scenario: Scenario) -> Check:
    """The destination can hold the VM: guest RAM plus QEMU's own. The testbed's hosts share
    this machine's memory, and source and destination both hold the VM while it moves."""
    available = _mem_available_bytes()
    vm = (scenario.vm.memory_mib + QEMU_OVERHEAD_MIB) * MIB
    need = 2 * vm
    figures = {"available_bytes": available, "needed_bytes": need, "vm_bytes": vm}
    message = (
        f"{available / MIB:.0f} MiB available; the VM needs {vm / MIB:.0f} MiB (guest RAM + "
        f"{QEMU_OVERHEAD_MIB} MiB QEMU) on each end, {need / MIB:.0f} MiB while both ends hold "
        "it (the testbed's hosts share this machine)"
    )
    if available < need:
        return Check(
            "memory",
            "fail",
            "not enough memory for the destination: " + message,
            "lower vm.memory_mib, or free memory on this machine",
            figures,
        )
    return Check("memory", "pass", message, figures=figures)


def _mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def ports_check(testbed: Testbed, ports: dict[str, int], destination: Host | None = None) -> Check:
    """The ports the destination must listen on are free there. `destination`: the testbed
    host that plays it (None: its own)."""
    netns = (destination or testbed.hosts["destination"]).netns
    taken = [
        f"{name} {port}" for name, port in ports.items() if not call_in_netns(netns, _free, port)
    ]
    listed = ", ".join(f"{name} {port}" for name, port in ports.items())
    if taken:
        return Check(
            "ports",
            "fail",
            f"ports in use on the destination host: {', '.join(taken)}",
            "stop what listens there (`ss -ltnp` in the destination's namespace), or run "
            "`vmigrate testbed down` to start from a clean testbed",
            {"ports": ports},
        )
    return Check("ports", "pass", f"free on the destination: {listed}", figures={"ports": ports})


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True
