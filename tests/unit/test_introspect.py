"""Asking a machine-less QEMU: a probe that ends without its answers is asked once more, and
says how it ended when it fails again."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from vmigrate.errors import HypervisorError
from vmigrate.hypervisor import introspect


def answering(outputs: list[str]) -> Any:
    """A subprocess.run that gives each call the next of `outputs` as QEMU's stdout."""

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0 if outputs[0] else -9, outputs.pop(0), "")

    return run


ANSWER = json.dumps({"return": {"name": "x"}, "id": 0}) + "\n"


def test_a_probe_that_ended_without_answers_is_asked_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outputs = ["", ANSWER]
    monkeypatch.setattr(introspect.subprocess, "run", answering(outputs))
    assert introspect.ask_qemu("tcg", [("query-name", {})]) == [{"name": "x"}]
    assert outputs == []


def test_a_probe_that_fails_twice_says_how_it_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(introspect.subprocess, "run", answering(["", ""]))
    with pytest.raises(HypervisorError, match=r"did not answer \(exit status -9\): no output"):
        introspect.ask_qemu("tcg", [("query-name", {})])
