"""Removing a testbed daemon's domains, and finding those a hung job will not let go — against
libvirt's in-process test driver (test:///default, one shared state per process); a daemon
found hung is stopped without being asked again."""

from __future__ import annotations

from typing import Any

import pytest

from vmigrate import libvirt_client
from vmigrate.testbed import libvirt_domains, state

URI = "test:///default"


def domain_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>"
    )


def test_destroy_domains_destroys_and_undefines() -> None:
    libvirt = libvirt_client.load()
    conn = libvirt.open(URI)
    conn.defineXML(domain_xml("stopped"))
    before = {d.name() for d in conn.listAllDomains(0)}
    assert "stopped" in before and len(before) >= 2, "the test driver runs a domain of its own"
    removed = libvirt_domains.destroy_domains(URI)
    assert set(removed) == before
    assert conn.listAllDomains(0) == []


def test_destroy_domains_of_a_missing_daemon_raises_quickly() -> None:
    libvirt = libvirt_client.load()
    with pytest.raises(libvirt.libvirtError):
        libvirt_domains.destroy_domains("qemu+unix:///system?socket=/nonexistent/libvirt-sock", 2.0)


def test_stuck_domains_undefines_stopped_ones_and_names_those_that_will_not_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libvirt = libvirt_client.load()
    conn = libvirt.open(URI)
    conn.createXML(domain_xml("running"), 0)
    conn.defineXML(domain_xml("left"))
    conn.defineXML(domain_xml("hung"))
    undefine = libvirt_domains._undefine

    def held_by_a_hung_job(dom: Any, name: str, timeout_s: float) -> None:
        if name == "hung":
            raise TimeoutError("cannot acquire state change lock")
        undefine(dom, name, timeout_s)

    monkeypatch.setattr(libvirt_domains, "_undefine", held_by_a_hung_job)
    try:
        assert libvirt_domains.stuck_domains(URI) == ["hung"]
        left = {d.name() for d in conn.listAllDomains(0)}
        assert "left" not in left, "a stopped domain an earlier run left is undefined"
        assert {"running", "hung"} <= left, "a running domain is left for `testbed recover`"
    finally:
        monkeypatch.undo()
        libvirt_domains.destroy_domains(URI)


def test_stuck_domains_of_a_missing_daemon_raises_quickly() -> None:
    libvirt = libvirt_client.load()
    with pytest.raises(libvirt.libvirtError):
        libvirt_domains.stuck_domains("qemu+unix:///system?socket=/nonexistent/libvirt-sock", 2.0)


@pytest.mark.parametrize("hung", [False, True])
def test_stopping_a_hung_daemon_does_not_ask_it_for_its_domains_again(
    monkeypatch: pytest.MonkeyPatch, hung: bool
) -> None:
    asked: list[str] = []
    stopped: list[tuple[int, float]] = []
    monkeypatch.setattr(state, "is_same_process", lambda pid, ticks: True)
    monkeypatch.setattr(state.libvirtd, "is_isolated_daemon", lambda pid: True)
    monkeypatch.setattr(state.libvirt_domains, "destroy_domains", lambda uri: asked.append(uri))
    monkeypatch.setattr(
        state.libvirtd, "stop", lambda pid, ticks, grace_s: stopped.append((pid, grace_s))
    )
    state.stop_libvirtd(state.Resource("process", "libvirtd-source", 4321), hung=hung)
    # One found hung is stopped without waiting on it once more, for its domains or on SIGTERM.
    assert bool(asked) is not hung
    grace_s = state.libvirtd.HUNG_STOP_GRACE_S if hung else state.libvirtd.STOP_GRACE_S
    assert stopped == [(4321, grace_s)]
