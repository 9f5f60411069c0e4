"""The testbed's libvirtd: config files, URIs, the bounded calls, start failures and teardown.

No daemon runs here: the configs are parsed back, failures use stand-in processes, and domain
teardown runs against libvirt's in-process test driver (test:///default).
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from vmigrate import libvirt_client
from vmigrate.errors import TestbedError
from vmigrate.pids import process_start_ticks
from vmigrate.testbed import libvirtd, libvirtd_config
from vmigrate.testbed.state import StateFile, tear_down
from vmigrate.testbed.testbed import Testbed


def parse_conf(text: str) -> dict[str, str]:
    """libvirt's `key = value` config lines (comments dropped), values as written."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key = value line: {line!r}"
        assert key.strip() not in values, f"{key.strip()} set twice"
        values[key.strip()] = value.strip()
    return values


def test_libvirtd_conf_listens_on_the_host_address_without_auth() -> None:
    conf = parse_conf(
        libvirtd_config.libvirtd_conf("10.241.0.2", "6f2e0a5c-1111-4a2b-9c3d-000000000002")
    )
    assert conf["listen_tcp"] == "1"
    assert conf["listen_tls"] == "0"
    assert conf["listen_addr"] == '"10.241.0.2"'
    assert conf["auth_tcp"] == '"none"'
    assert conf["auth_unix_rw"] == '"none"'
    assert conf["host_uuid"] == '"6f2e0a5c-1111-4a2b-9c3d-000000000002"'
    assert conf["log_outputs"] == '"3:stderr"'


def test_libvirtd_conf_without_address_has_no_tcp() -> None:
    conf = parse_conf(libvirtd_config.libvirtd_conf(None, str(uuid.uuid4())))
    assert conf["listen_tcp"] == "0"
    assert "listen_addr" not in conf and "auth_tcp" not in conf


def test_qemu_conf_runs_qemu_as_root_without_confinement() -> None:
    conf = parse_conf(libvirtd_config.qemu_conf("10.241.0.1"))
    assert conf == {
        "user": '"root"',
        "group": '"root"',
        "dynamic_ownership": "0",
        "remember_owner": "0",
        "security_driver": '"none"',
        "cgroup_controllers": "[ ]",
        "namespaces": "[ ]",
        "stdio_handler": '"file"',
        "migration_address": '"10.241.0.1"',
        "migration_host": '"10.241.0.1"',
        "migrate_tls_x509_cert_dir": '"/etc/libvirt/pki/migrate"',
    }
    assert "migration_address" not in parse_conf(libvirtd_config.qemu_conf(None))


def test_config_values_that_would_break_the_file_are_refused() -> None:
    with pytest.raises(TestbedError):
        libvirtd_config.libvirtd_conf('10.0.0.1"\nauth_unix_rw = "polkit', str(uuid.uuid4()))


def test_host_uuids_are_stable_valid_and_distinct_per_host_and_testbed() -> None:
    ids = {
        (name, role): libvirtd_config.host_uuid(name, role)
        for name in ("vmig", "vmigt")
        for role in ("source", "destination")
    }
    assert len(set(ids.values())) == 4
    assert libvirtd_config.host_uuid("vmig", "source") == ids[("vmig", "source")]
    for value in ids.values():
        assert str(uuid.UUID(value)) == value


def test_uris() -> None:
    assert (
        libvirtd.unix_uri(1234)
        == "qemu+unix:///system?socket=/proc/1234/root/run/libvirt/libvirt-sock"
    )
    assert libvirtd.root_of(1234) == Path("/proc/1234/root")
    assert libvirtd.tcp_uri("10.241.0.2") == "qemu+tcp://10.241.0.2/system"
    assert libvirtd.migration_uri("10.241.0.2") == "tcp://10.241.0.2"
    bed = Testbed("vmunit")
    assert bed.libvirt_tcp_uri("destination") == "qemu+tcp://10.241.0.2/system"
    assert bed.libvirt_migration_uri("destination") == "tcp://10.241.0.2"


def test_version_string() -> None:
    assert libvirt_client.version_string(11003000) == "11.3.0"
    assert libvirt_client.version_string(9000000) == "9.0.0"
    assert libvirt_client.version_string(10010002) == "10.10.2"


def test_libvirt_uri_without_a_daemon_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMIGRATE_STATE", str(tmp_path))
    bed = Testbed("vmunit")
    with pytest.raises(TestbedError, match="--libvirt"):
        bed.libvirt_uri("source")
    with pytest.raises(TestbedError, match="--libvirt"):
        bed.libvirt_root("destination")
    assert bed.has_libvirt() is False


def test_bounded_returns_raises_and_times_out() -> None:
    assert libvirt_client.bounded(lambda: 42, 1.0, "answer") == 42
    with pytest.raises(ZeroDivisionError):
        libvirt_client.bounded(lambda: 1 // 0, 1.0, "divide")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="hang: no answer"):
        libvirt_client.bounded(lambda: time.sleep(5), 0.2, "hang")
    assert time.monotonic() - started < 2


def test_prepare_writes_configs_wrapper_and_seeds_the_capabilities_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMIGRATE_CACHE", str(tmp_path / "cache"))
    shared = libvirtd.capabilities_cache()
    shared.mkdir(parents=True)
    (shared / "abc.xml").write_text("<qemuCaps/>")
    spec = libvirtd.DaemonSpec("libvirtd-source", tmp_path / "src", "x", "10.241.0.1", "u")
    libvirtd.prepare(spec)
    for sub, _ in libvirtd.BIND_MOUNTS:
        assert (spec.work_dir / sub).is_dir()
    assert (spec.work_dir / "log" / "qemu").is_dir()
    # libvirtd refuses to start when qemu.conf's migrate_tls_x509_cert_dir is missing.
    assert (spec.work_dir / "etc" / libvirtd.MIGRATE_TLS_DIR).is_dir()
    assert "listen_addr" in (spec.work_dir / "etc" / "libvirtd.conf").read_text()
    assert "migration_address" in (spec.work_dir / "etc" / "qemu.conf").read_text()
    wrapper = (spec.work_dir / libvirtd.WRAPPER_NAME).read_text()
    for _, target in libvirtd.BIND_MOUNTS:
        assert target in wrapper
    seeded = spec.work_dir / "cache" / "qemu" / "capabilities" / "abc.xml"
    assert seeded.read_text() == "<qemuCaps/>"
    assert subprocess.run(["sh", "-n", str(spec.work_dir / libvirtd.WRAPPER_NAME)]).returncode == 0


def _stand_in(tmp_path: Path, script: str) -> libvirtd.Daemon:
    """A process standing in for libvirtd (not namespaced), registered as if launched."""
    spec = libvirtd.DaemonSpec("libvirtd-source", tmp_path, None, None, "u")
    child = subprocess.Popen(["sh", "-c", script], stdout=spec.log_path.open("ab"))
    libvirtd._CHILDREN[child.pid] = child
    return libvirtd.Daemon(spec, child.pid, process_start_ticks(child.pid))


def test_a_daemon_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    daemon = _stand_in(tmp_path, "echo 'error : cannot load the QEMU driver'; exit 3")
    with pytest.raises(TestbedError) as caught:
        libvirtd.wait_ready(daemon, time.monotonic() + 10)
    message = str(caught.value)
    assert "exited with status 3" in message
    assert "cannot load the QEMU driver" in message
    assert str(daemon.spec.log_path) in message
    libvirtd.release(daemon.pid)


def test_a_daemon_that_ends_between_the_two_looks_still_says_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running when its Popen is polled, a zombie when its /proc entry is read (the race a
    loaded machine hit): it is reaped, and its status said, all the same."""
    daemon = _stand_in(tmp_path, "exit 3")
    child = libvirtd._CHILDREN[daemon.pid]
    while daemon.alive():  # until it is a zombie, not reaped
        time.sleep(0.01)
    monkeypatch.setattr(child, "poll", lambda: None)  # the poll came just before it ended
    with pytest.raises(TestbedError, match="exited with status 3"):
        libvirtd.wait_ready(daemon, time.monotonic() + 10)
    libvirtd.release(daemon.pid)


def test_a_daemon_that_never_answers_times_out(tmp_path: Path) -> None:
    daemon = _stand_in(tmp_path, "echo probing; exec sleep 30")
    started = time.monotonic()
    try:
        with pytest.raises(TestbedError, match="no answer after"):
            libvirtd.wait_ready(daemon, time.monotonic() + 0.5)
        assert time.monotonic() - started < 5
    finally:
        libvirtd.stop(daemon.pid, daemon.start_ticks, grace_s=1.0)
    assert not daemon.alive()


def test_teardown_stops_a_recorded_libvirtd_even_when_it_does_not_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record labelled libvirtd that is not one (or does not answer) is stopped all the same;
    its domains are never looked up through our own root (the machine's libvirtd)."""
    state = StateFile(tmp_path / "state.json")
    victim = subprocess.Popen(["sleep", "60"])
    state.add_process(victim.pid, "libvirtd-source")
    with caplog.at_level(logging.WARNING):
        assert tear_down(state) == []
    assert victim.wait(timeout=5) is not None
    assert "domains not destroyed" in caplog.text


def test_is_isolated_daemon_refuses_processes_sharing_our_mounts() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert libvirtd.is_isolated_daemon(proc.pid) is False
    finally:
        proc.kill()
        proc.wait()


def test_doctor_reports_libvirt_versions_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmigrate import doctor

    monkeypatch.setattr(libvirtd, "library_version", lambda: "11.3.0")
    monkeypatch.setattr(libvirtd, "daemon_version", lambda: "11.3.0")
    found = doctor._libvirt_versions()
    assert found.ok and found.detail == "library 11.3.0, libvirtd 11.3.0"
    monkeypatch.setattr(libvirtd, "library_version", lambda: "9.0.0")
    monkeypatch.setattr(libvirtd, "daemon_version", lambda: "9.0.0")
    found = doctor._libvirt_versions()
    assert not found.ok and "too old" in found.detail and "bookworm-backports" in found.fix

    def missing() -> str:
        raise TestbedError("libvirtd is not installed: run `make setup`")

    monkeypatch.setattr(libvirtd, "daemon_version", missing)
    found = doctor._libvirt_versions()
    assert not found.ok and not found.required
    assert found.detail == "libvirtd is not installed"


def test_doctor_says_why_libvirtd_did_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmigrate import doctor

    def fails(timeout_s: float = 45.0) -> str:
        raise TestbedError(
            "libvirtd (probe) in a private netns failed to start: it exited with status 6. "
            "Last lines of /tmp/x/libvirtd.log:\n  error : cannot load the QEMU driver"
        )

    monkeypatch.setattr(libvirtd, "probe", fails)
    found = doctor._libvirtd_starts()
    assert not found.ok
    assert "exited with status 6" in found.detail
    assert found.detail.endswith("error : cannot load the QEMU driver")
    assert found.fix == doctor.LIBVIRT_FIX
    monkeypatch.setattr(libvirtd, "probe", lambda: "libvirtd 11.3.0 started in 0.2 s")
    assert doctor._libvirtd_starts().ok


def test_a_missing_libvirtd_is_bad_input_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmigrate.errors import EnvironmentProblem

    monkeypatch.setattr(libvirtd.shutil, "which", lambda _name: None)
    with pytest.raises(EnvironmentProblem, match="make setup") as caught:
        libvirtd.libvirtd_binary(search=())
    assert caught.value.exit_code == 2
