"""Bad input, fuzzed: whatever a scenario file, a --set or a run directory holds, vmigrate
answers with a result or with one line (a UsageError: exit 2) — never a traceback — and
creates nothing."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic_run import make_synthetic_run
from typer.testing import CliRunner

from vmigrate.cli import app
from vmigrate.config import load_scenario
from vmigrate.errors import UsageError
from vmigrate.report.rebuild import reanalyse

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
SECTIONS = ["vm", "workload", "hosts", "network", "storage", "service", "migration", "phases",
            "load", "measure", "fault", "bogus"]  # fmt: skip
KEYS = ["memory_mib", "strategy", "backend", "source_uri", "domain", "bandwidth_mbit",
        "address", "timeout_s", "on_stall", "rate_rps", "kind", "mode", "x"]  # fmt: skip
VALUES = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.booleans(),
    st.text(max_size=30), st.lists(st.integers(), max_size=3),
)  # fmt: skip


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON-escaped
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else repr(value)
    return json.dumps(value)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete recorded run (synthetic series, real analysis)."""
    return make_synthetic_run(tmp_path_factory.mktemp("pristine") / "run")


def one_line(error: UsageError) -> None:
    text = str(error)
    assert text and "\n" not in text, text
    assert error.exit_code == 2


@FAST
@given(
    st.one_of(
        st.text(max_size=200),
        st.dictionaries(
            st.sampled_from(SECTIONS),
            st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4),
            max_size=4,
        ).map(
            lambda d: "\n".join(
                f"[{section}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in keys.items())
                for section, keys in d.items()
            )
        ),
    ),
    st.lists(st.text(max_size=40), max_size=3),
)
def test_a_scenario_and_its_overrides_load_or_fail_in_one_line(
    text: str, overrides: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "scenario.toml")
        path.write_text(text)
        try:
            load_scenario(path, overrides)
        except UsageError as error:
            one_line(error)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["scenario.toml"]


@st.composite
def corruption(draw: st.DrawFn) -> tuple[str, str, Any]:
    """Which file of a run to corrupt, how, and with what."""
    target = draw(st.sampled_from(["result.json", "series/probe.csv", "series/migration.csv",
                                   "series/processes.csv", "series/events.csv"]))  # fmt: skip
    how = draw(st.sampled_from(["replace-key", "truncate", "garbage", "drop-key"]))
    return target, how, draw(st.one_of(VALUES, st.dictionaries(st.text(max_size=5), VALUES)))


def corrupt(run_dir: Path, target: str, how: str, value: Any, rng: random.Random) -> None:
    path = run_dir / target
    if target == "result.json" and how in ("replace-key", "drop-key"):
        document = json.loads(path.read_text())
        section = rng.choice(sorted(document))
        node = document
        if isinstance(node[section], dict) and node[section] and rng.random() < 0.7:
            node, section = node[section], rng.choice(sorted(node[section]))
        if how == "drop-key":
            del node[section]
        else:
            node[section] = value
        path.write_text(json.dumps(document))
    elif how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(len(data) + 1)])
    else:
        lines = path.read_text().splitlines()
        lines.insert(rng.randrange(len(lines) + 1), str(value))
        path.write_text("\n".join(lines))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(corruption(), st.integers(0, 2**32))
def test_a_corrupted_run_is_reanalysed_or_refused_in_one_line(
    pristine: Path, damage: tuple[str, str, Any], seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp, "run")
        shutil.copytree(pristine, run_dir)
        (run_dir / "report.html").unlink(missing_ok=True)
        corrupt(run_dir, *damage, random.Random(seed))
        before = sorted(p.name for p in run_dir.rglob("*"))
        try:
            reanalyse(run_dir)  # what `vmigrate report` reads; it renders only what this gave
        except UsageError as error:
            one_line(error)
        assert sorted(p.name for p in run_dir.rglob("*")) == before  # nothing created


def test_the_command_line_says_it_in_one_line_with_exit_2(pristine: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(pristine, run_dir)
    (run_dir / "result.json").write_text('{"clock": {"t0_ns": "soon"}, "timeline_s": []}')
    done = CliRunner().invoke(app, ["report", str(run_dir)])
    assert done.exit_code == 2, done.output
    assert len(done.output.strip().splitlines()) == 1, done.output
    assert not isinstance(done.exception, Exception) or isinstance(done.exception, SystemExit)
