"""Scenario model: what to migrate, under which load, over which network, with which strategy.

A scenario is a TOML file validated by pydantic; unknown keys are rejected so a typo never
silently falls back to a default. `--set section.key=value` overrides are applied before
validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from vmigrate.config_hosts import HostsSpec
from vmigrate.config_section import Section
from vmigrate.errors import ScenarioError, UsageError
from vmigrate.testbed.network import DEFAULT_HYPERVISORS, MAX_HYPERVISORS


class VmSpec(Section):
    """The guest: its size and the CPU it is shown."""

    memory_mib: int = Field(512, gt=0, le=65536, description="guest RAM in MiB")
    vcpus: int = Field(1, ge=1, le=64, description="virtual CPUs")
    cpu_model: str = Field(
        "qemu64",
        min_length=1,
        description="QEMU CPU model, optionally with feature switches (Westmere,aes=on); "
        "baseline: the most capable model every host offers",
    )
    accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="auto uses KVM only if a bounded probe boots with it, else TCG"
    )
    machine: str = Field(
        "q35",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="QEMU machine type; an alias (q35, pc) is pinned to the versioned type it "
        "stands for (pc-q35-10.0) so both ends build the same virtual hardware",
    )
    disk_cache: Literal["none", "directsync", "writethrough", "writeback", "unsafe"] = Field(
        "none",
        description="the disk's cache mode; on shared storage only none and directsync are "
        "safe to migrate (the destination could read stale data otherwise)",
    )


class WorkloadSpec(Section):
    """What runs inside the guest while it migrates."""

    kind: Literal["idle", "web", "memory"] = Field("web", description="guest workload")
    dirty_rate_mib_s: float = Field(0, ge=0, le=100000, description="memory dirtied per second")
    working_set_mib: int = Field(64, ge=1, description="memory the workload dirties")


class NetworkSpec(Section):
    """The links between the testbed's hosts."""

    bandwidth_mbit: float = Field(1000, gt=0, le=100000, description="uplink rate (tbf)")


class TestbedSpec(Section):
    """The embedded testbed the scenario runs on."""

    __test__ = False  # not a pytest test class, despite its name

    hypervisors: int = Field(
        DEFAULT_HYPERVISORS,
        description=f"hypervisor hosts ({DEFAULT_HYPERVISORS} to {MAX_HYPERVISORS}): the source "
        "and the destination, then hv3, hv4, ... on the same switch; at least: a testbed that "
        "is up with fewer gets hosts added, one with more keeps them",
    )

    @field_validator("hypervisors")
    @classmethod
    def _in_range(cls, value: int) -> int:
        if not DEFAULT_HYPERVISORS <= value <= MAX_HYPERVISORS:
            raise ValueError(
                f"testbed.hypervisors: {value} is out of range; use {DEFAULT_HYPERVISORS} to "
                f"{MAX_HYPERVISORS} (the source, the destination and up to "
                f"{MAX_HYPERVISORS - DEFAULT_HYPERVISORS} more hypervisor hosts)"
            )
        return value


class StorageSpec(Section):
    """Where the guest's disk lives."""

    mode: Literal["shared-nfs", "local"] = Field(
        "shared-nfs",
        description="shared-nfs: one disk on the storage host's NFS export; local: each host "
        "keeps its own disk and the migration copies it (mirror into an NBD export, kept in "
        "sync while the RAM moves, as libvirt's --copy-storage-all does)",
    )


Strategy = Literal["precopy", "postcopy", "hybrid", "auto-converge", "xbzrle", "multifd", "cold"]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]
# Which strategy each strategy-specific key tunes: a non-default value for another is refused.
STRATEGY_KEYS = {
    "postcopy_after_iterations": ("hybrid",),
    "postcopy_preempt": ("postcopy", "hybrid"),
    "cpu_throttle_initial_pct": ("auto-converge",),
    "cpu_throttle_increment_pct": ("auto-converge",),
    "xbzrle_cache_mib": ("xbzrle",),
    "multifd_channels": ("multifd",),
    "multifd_compression": ("multifd",),
}


class MigrationSpec(Section):
    """How the VM is moved, and the knobs of each strategy."""

    strategy: Strategy = Field(
        "precopy",
        description="precopy; postcopy (switch at once: the VM runs on the destination, which "
        "pulls its pages); hybrid (pre-copy, then post-copy after postcopy_after_iterations "
        "passes); auto-converge (throttle the "
        "vCPUs); xbzrle (send deltas of re-dirtied pages); multifd (parallel channels, "
        "optional compression); cold (pause, move, resume)",
    )
    max_bandwidth_mib_s: float = Field(0, ge=0, description="cap; 0 = only the link limits")
    downtime_limit_ms: int = Field(300, ge=1, le=600000, description="allowed stop-and-copy")
    timeout_s: float = Field(120, gt=0, le=86400, description="cancel when not done by then")
    postcopy_after_iterations: int = Field(3, ge=1, le=10000, description="hybrid: passes first")
    postcopy_preempt: bool = Field(
        False,
        description="post-copy: the pages the destination faults on travel on a connection of "
        "their own, ahead of the background copy (QEMU's postcopy-preempt). libvirt 11.3 turns "
        "it on with every post-copy, so through libvirt false is not honoured (the run says so)",
    )
    cpu_throttle_initial_pct: int = Field(20, ge=1, le=99, description="auto-converge: first")
    cpu_throttle_increment_pct: int = Field(10, ge=1, le=100, description="auto-converge: step")
    xbzrle_cache_mib: int = Field(64, ge=1, le=65536, description="xbzrle: page cache size")
    multifd_channels: int = Field(2, ge=1, le=255, description="multifd: parallel connections")
    multifd_compression: Literal["none", "zlib", "zstd"] = Field(
        "none", description="multifd: compress pages"
    )
    on_stall: Literal["none", "fail", "postcopy", "auto-converge", "raise-downtime"] = Field(
        "none",
        description="when remaining bytes stop shrinking for stall_iterations passes (or at "
        "timeout_s): none (go on until timeout_s), fail (cancel now), postcopy (switch to "
        "post-copy), auto-converge (cancel, then start again with the vCPU throttle on), "
        "raise-downtime (allow the stop-and-copy QEMU expects)",
    )
    stall_iterations: int = Field(3, ge=1, le=1000, description="passes without progress")
    tls: bool = Field(
        False,
        description="encrypt the migration stream (and the disk copy) with TLS: on the testbed "
        "with x509 certificates made for the run; on your own hosts with the TLS set-up of "
        "their libvirt (migrate_tls_x509_cert_dir)",
    )

    @model_validator(mode="after")
    def _keys_match_the_strategy(self) -> MigrationSpec:
        if self.strategy == "cold" and self.on_stall not in ("none", "fail"):
            raise ValueError(
                f"migration.on_stall = {self.on_stall!r} needs a live migration; a cold one "
                "(strategy cold) cannot stall: use none or fail"
            )
        if self.strategy in ("auto-converge", "postcopy") and self.on_stall == "auto-converge":
            raise ValueError(
                f"migration.on_stall = 'auto-converge' restarts a stalled migration with the vCPU "
                f"throttle on; strategy {self.strategy} "
                + (
                    "has it on already"
                    if self.strategy == "auto-converge"
                    else "moves to post-copy at once, which cannot stall"
                )
                + ": choose another on_stall"
            )
        # on_stall = auto-converge uses the throttle knobs too; on_stall = postcopy, post-copy's.
        tuned = (
            self.strategy,
            *([self.on_stall] if self.on_stall in ("auto-converge", "postcopy") else []),
        )
        for key in sorted(self.model_fields_set & STRATEGY_KEYS.keys()):
            default = type(self).model_fields[key].default
            if not set(tuned) & set(STRATEGY_KEYS[key]) and getattr(self, key) != default:
                raise ValueError(
                    f"migration.{key} tunes strategy {' or '.join(STRATEGY_KEYS[key])}, not "
                    f"{self.strategy}; remove it or set migration.strategy accordingly"
                )
        return self


class ServiceSpec(Section):
    """Your own hosts: the VM's service, as the machine running vmigrate reaches it."""

    address: str = Field(
        "",
        description="what the downtime probe pings (the VM's address); required with hosts.domain",
    )
    http_url: str = Field(
        "",
        description="what the load generator requests (http://ADDRESS[:PORT]/); empty: "
        "no load, only the probe",
    )


class PhasesSpec(Section):
    """Measurement windows around the migration."""

    warmup_s: float = Field(3, ge=0, le=3600, description="after boot, before measuring")
    baseline_s: float = Field(5, ge=0, le=3600, description="measured before migrating")
    after_s: float = Field(5, ge=0, le=3600, description="measured after migrating")


class LoadSpec(Section):
    """The client host's view of the service: an open-loop HTTP load and a downtime probe."""

    rate_rps: float = Field(
        100, ge=0, le=20000, description="HTTP requests per second (web and memory kinds; 0 = none)"
    )
    probe: Literal["icmp", "udp"] = Field(
        "icmp",
        description="downtime probe: ICMP echo (answered by the guest kernel, even while it "
        "works off a backlog) or UDP echo (answered by the guest agent)",
    )
    probe_interval_ms: float = Field(1, ge=0.1, le=1000, description="echo probe interval")
    sla_ms: float = Field(100, gt=0, description="a request slower than this violates the SLA")
    timeout_ms: int = Field(2000, ge=10, le=600000, description="a request is a timeout after")


FAULT_AT = re.compile(r"^(?P<value>\d+(\.\d+)?)\s*(?P<unit>%|s)$")


FaultKind = Literal[
    "none",
    "kill-destination",
    "kill-source",
    "freeze-source",
    "link-down",
    "link-loss",
    "nfs-stall",
    "cancel",
    "kill-vmigrate",
]
#: Faults that last until undone: they need a duration (0 would mean a hung host for good).
NEEDS_DURATION = ("freeze-source", "nfs-stall")


class FaultSpec(Section):
    """A fault injected, for real, while the VM migrates (testbed only)."""

    kind: FaultKind = Field(
        "none",
        description="kill-destination / kill-source: SIGKILL that host's QEMU; freeze-source: "
        "SIGSTOP the source's QEMU for duration_ms, then SIGCONT; link-down: the source host's "
        "uplink down for duration_ms (0: for good); link-loss: drop loss_pct of the source "
        "host's packets for duration_ms (0: for good); nfs-stall: SIGSTOP the storage host's NFS "
        "server for duration_ms, then SIGCONT; cancel: the user cancels the migration; "
        "kill-vmigrate: SIGKILL vmigrate itself (then `vmigrate testbed recover` finds the VM)",
    )
    at: str = Field(
        "50%",
        description='when: a share of the bytes to send ("40%") or seconds after the '
        'migration started ("2.5s")',
    )
    duration_ms: int = Field(
        0, ge=0, le=600000, description="how long a freeze, stall, cut or loss lasts (0: for good)"
    )
    loss_pct: float = Field(10, gt=0, le=100, description="link-loss: share of packets dropped")

    @model_validator(mode="after")
    def _when_and_how_long(self) -> FaultSpec:
        match = FAULT_AT.match(self.at.strip())
        if match is None or (match["unit"] == "%" and float(match["value"]) > 100):
            raise ValueError(
                f'fault.at: {self.at!r} is neither a share of the bytes ("40%", at most 100%) '
                'nor seconds after the migration started ("2.5s")'
            )
        if self.kind in NEEDS_DURATION and self.duration_ms == 0:
            raise ValueError(
                f"fault.duration_ms: {self.kind} needs a duration (a process stopped for good "
                "is a hung host; use kill-destination, kill-source or link-down for lasting "
                "faults)"
            )
        return self

    def due(self, elapsed_s: float, percent_sent: float) -> bool:
        """True once the migration reached `at`."""
        match = FAULT_AT.match(self.at.strip())
        assert match is not None
        value = float(match["value"])
        return percent_sent >= value if match["unit"] == "%" else elapsed_s >= value


class MeasureSpec(Section):
    """How often the samplers read the hypervisor and the hosts."""

    progress_interval_ms: int = Field(100, ge=10, le=10000, description="query-migrate period")
    resource_interval_ms: int = Field(200, ge=50, le=10000, description="host sampling period")
    capture: bool = Field(
        True, description="capture the probe's packets on the client host (tcpdump): its referee"
    )


class Scenario(Section):
    """One experiment: every knob, with defaults that make a sensible first run."""

    name: str = Field("scenario", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    vm: VmSpec = VmSpec()
    workload: WorkloadSpec = WorkloadSpec()
    hosts: HostsSpec = HostsSpec()
    testbed: TestbedSpec = TestbedSpec()
    network: NetworkSpec = NetworkSpec()
    storage: StorageSpec = StorageSpec()
    service: ServiceSpec = ServiceSpec()
    migration: MigrationSpec = MigrationSpec()
    phases: PhasesSpec = PhasesSpec()
    load: LoadSpec = LoadSpec()
    measure: MeasureSpec = MeasureSpec()
    fault: FaultSpec = FaultSpec()

    @model_validator(mode="after")
    def _faults_on_the_testbed(self) -> Scenario:
        if self.fault.kind != "none" and self.hosts.real:
            raise ValueError(
                "fault: faults are injected on the testbed only; vmigrate does not kill or cut "
                "anything on your own hosts"
            )
        return self

    @model_validator(mode="after")
    def _testbed_hosts_on_the_testbed(self) -> Scenario:
        if self.hosts.real and self.testbed.hypervisors != DEFAULT_HYPERVISORS:
            raise ValueError(
                "testbed.hypervisors: your own hosts (hosts.source_uri, destination_uri) are "
                "not a testbed; remove it"
            )
        return self

    @model_validator(mode="after")
    def _service_for_real_hosts(self) -> Scenario:
        if self.hosts.real and not self.service.address:
            raise ValueError(
                "service.address: your own hosts need the VM's address, which the probe pings "
                "(and service.http_url for the load, optional)"
            )
        if self.service.address and not self.hosts.real:
            raise ValueError(
                "service.address is for your own hosts (with hosts.source_uri, destination_uri "
                "and domain); the testbed's guest has its own"
            )
        return self

    @model_validator(mode="after")
    def _working_set_fits(self) -> Scenario:
        if (
            self.workload.kind == "memory"
            and self.workload.working_set_mib > self.vm.memory_mib // 2
        ):
            raise ValueError(
                f"workload.working_set_mib: {self.workload.working_set_mib} MiB does not fit a "
                f"{self.vm.memory_mib} MiB guest; use at most {self.vm.memory_mib // 2}"
            )
        return self


SECTIONS: dict[str, type[Section]] = {
    name: info.annotation
    for name, info in Scenario.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, Section)
}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value` into a key path and a TOML-typed value (bare words are strings)."""
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path) or not raw.strip():
        raise ScenarioError(
            f"--set {text!r}: expected section.key=value, e.g. --set vm.memory_mib=1024"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with every `section.key=value` override applied."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScenarioError(f"--set {text!r}: {part!r} is a value, not a section")
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return merged


def _key_text(part: str | int) -> str:
    """A key as one line can show it: as written, or quoted when it holds a line break or
    another character that does not print."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def _describe(error: ErrorDetails) -> str:
    """One human line for one pydantic error: which key, what is wrong, what is allowed."""
    parts = error["loc"]
    loc = ".".join(_key_text(part) for part in parts)
    kind = error["type"]
    got = error.get("input")
    if kind == "extra_forbidden":
        section, key = ".".join(str(part) for part in parts[:-1]), str(parts[-1])
        model: type[BaseModel] = SECTIONS.get(section, Scenario) if section else Scenario
        allowed = ", ".join(model.model_fields)
        where = f"[{section}]" if section else "the top level"
        return f"{loc}: unknown key {key!r}; allowed keys in {where}: {allowed}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        allowed = expected.replace("'", "").replace(" or ", ", ")
        return f"{loc}: {got!r} is not allowed; choose one of: {allowed}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    msg = str(error["msg"])
    msg = msg.replace("Input should be", "must be")
    return f"{loc}: {msg} (got {got!r})"


def validate_scenario(data: dict[str, Any], origin: str = "scenario") -> Scenario:
    """Validate raw scenario data; raise ScenarioError with one line naming the bad key."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ScenarioError(f"{origin}: {_describe(first)}{suffix}") from None


def read_toml(path: Path, what: str, error: type[UsageError] = ScenarioError) -> dict[str, Any]:
    """The data of a TOML file (`what` names its kind); any problem reading it is one line."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise error(f"{path}: cannot read: {reason}") from None


def load_scenario(path: Path, overrides: list[str] | None = None) -> Scenario:
    """Read a scenario TOML file, apply --set overrides, validate."""
    data = read_toml(path, "scenario")
    return validate_scenario(apply_overrides(data, overrides or []), origin=str(path))


def scenario_to_dict(scenario: Scenario) -> dict[str, Any]:
    """The full effective scenario, every default spelled out (for result.json)."""
    return scenario.model_dump(mode="json")
