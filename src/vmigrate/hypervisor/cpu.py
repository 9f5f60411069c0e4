"""CPU models and features, as QEMU itself defines them: what a guest's CPU model asks of a
host, what a host offers, and the most capable model a set of hosts all offer.

Everything comes from a short-lived QEMU (see introspect.py): every model of
query-cpu-definitions, each expanded to its CPUID features with query-cpu-model-expansion
(static: canonical feature names, no aliases), and the accelerator's own limit — the expansion
of `max` under TCG (the features TCG implements) or `host` under KVM (the real host CPU).

A host may declare a CPU ceiling (a model name): it then offers that model's features but for
the ones query-cpu-definitions lists as unavailable under this accelerator (under TCG: what TCG
does not implement). That is how the testbed stands in for an older host.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from vmigrate.errors import HypervisorError, UsageError
from vmigrate.hypervisor.introspect import QEMU_BINARY, ask_qemu

BASELINE = "baseline"  # vm.cpu_model value: choose the model for me
# Models that are not a fixed CPU: never a baseline, never a ceiling.
NOT_A_FIXED_MODEL = {"max", "host", "base"}


@dataclass(frozen=True)
class CpuModel:
    """One named model of query-cpu-definitions, with its CPUID features."""

    name: str
    alias_of: str | None
    migration_safe: bool
    deprecated: bool
    features: frozenset[str]
    unavailable: frozenset[str] = frozenset()  # what the accelerator cannot give of it


@dataclass(frozen=True)
class CpuCatalog:
    """Every CPU model one QEMU knows under one accelerator, and what that accelerator offers."""

    accel: str
    models: dict[str, CpuModel]
    accel_features: frozenset[str]  # TCG: what it implements; KVM: the host CPU
    known_features: frozenset[str]  # every feature name a model string may switch on or off

    def model(self, name: str, what: str) -> CpuModel:
        """The model called `name`, or a usage error naming `what` asked for it."""
        model = self.models.get(name)
        if model is None or name in NOT_A_FIXED_MODEL - {"max"}:
            close = sorted(m for m in self.models if m.lower().startswith(name[:3].lower()))
            hint = f" (close: {', '.join(close[:6])})" if close else ""
            raise UsageError(
                f"{what} = {name!r} is not a CPU model QEMU knows{hint}; "
                f"`{QEMU_BINARY} -cpu help` lists them"
            )
        return model

    def requested(self, cpu_model: str, what: str = "vm.cpu_model") -> frozenset[str]:
        """The features a `-cpu` string asks for ("Westmere", "Westmere,avx=on,+aes,-pcid"),
        as this accelerator will run it: under TCG, what TCG does not implement is dropped on
        every host alike (QEMU warns and carries on), so it is no one's requirement."""
        name, *flags = cpu_model.split(",")
        features = set(self.model(name, what).features)
        for flag in flags:
            feature, on = feature_switch(flag)
            if feature not in self.known_features:
                raise UsageError(
                    f"{what} = {cpu_model!r}: {feature!r} is not a CPU feature QEMU knows; "
                    f"`{QEMU_BINARY} -cpu help` lists them"
                )
            (features.add if on else features.discard)(feature)
        if self.accel == "tcg":
            features -= self.model(name, what).unavailable
            features &= self.accel_features  # for switched-on features
        return frozenset(features)

    def dropped(self, cpu_model: str) -> list[str]:
        """What a model asks for that this accelerator cannot give (under TCG: dropped)."""
        name = cpu_model.split(",")[0]
        return sorted(self.model(name, "vm.cpu_model").unavailable)

    def offered(self, ceiling: str, what: str) -> frozenset[str]:
        """What a host offers: the accelerator's features, limited by its declared ceiling."""
        if not ceiling:
            return self.accel_features
        model = self.model(ceiling, what)
        return model.features - model.unavailable


@dataclass(frozen=True)
class Baseline:
    """The model every host can run: a named model plus the common features it lacks."""

    model: str
    extra_features: tuple[str, ...]
    common_features: frozenset[str]

    @property
    def cpu_model(self) -> str:
        """As a `-cpu` string."""
        return ",".join([self.model, *(f"{f}=on" for f in self.extra_features)])


def feature_switch(text: str) -> tuple[str, bool]:
    """One feature switch of a `-cpu` string: "+f", "-f", "f=on", "f=off" (or bare "f")."""
    if text.startswith(("+", "-")):
        return text[1:], text[0] == "+"
    feature, _, value = text.partition("=")
    return feature, value.lower() not in ("off", "false", "no")


def missing(requested: frozenset[str], offered: frozenset[str]) -> list[str]:
    """The requested features a host does not offer, sorted."""
    return sorted(requested - offered)


def baseline(catalog: CpuCatalog, offered: list[frozenset[str]]) -> Baseline:
    """The most capable named model every host offers (most features; then the fewest the
    accelerator would drop; then the newest version), plus, as feature flags, what all hosts
    offer beyond it."""
    common = frozenset.intersection(*offered) if offered else catalog.accel_features
    fits = [
        m
        for m in catalog.models.values()
        if m.alias_of is None
        and m.migration_safe
        and not m.deprecated
        and m.name not in NOT_A_FIXED_MODEL
        and catalog.requested(m.name) <= common
    ]
    if not fits:
        raise HypervisorError("no named CPU model fits every host, not even qemu64")
    best = max(
        fits,
        key=lambda m: (
            len(catalog.requested(m.name)),
            -len(catalog.dropped(m.name)),
            _version(m.name),
            m.name,
        ),
    )
    extra = tuple(sorted(common - catalog.requested(best.name)))
    return Baseline(best.name, extra, common)


def _version(name: str) -> int:
    """The -vN suffix of a versioned model name (0 when none)."""
    head, _, tail = name.rpartition("-v")
    return int(tail) if head and tail.isdigit() else 0


@functools.cache
def load_catalog(accel: str) -> CpuCatalog:
    """Ask QEMU for every CPU model and its features under `accel` ("tcg" or "kvm")."""
    listing = ask_qemu(accel, [("query-cpu-definitions", {})])[0]
    names = [str(d["name"]) for d in listing]
    limit = "host" if accel == "kvm" else "max"
    expansions = ask_qemu(
        accel,
        [
            ("query-cpu-model-expansion", {"type": "static", "model": {"name": name}})
            for name in [*names, limit]
        ],
    )
    props = [e["model"]["props"] for e in expansions]

    def enabled(p: dict[str, object]) -> frozenset[str]:
        return frozenset(k for k, v in p.items() if v is True)

    models = {
        name: CpuModel(
            name=name,
            alias_of=d.get("alias-of"),
            migration_safe=bool(d.get("migration-safe", False)),
            deprecated=bool(d.get("deprecated", False)),
            features=enabled(p),
            unavailable=frozenset(str(f) for f in d.get("unavailable-features", [])),
        )
        for name, d, p in zip(names, listing, props, strict=False)
    }
    known = frozenset(k for p in props for k, v in p.items() if isinstance(v, bool))
    return CpuCatalog(accel, models, enabled(props[-1]), known)
