"""Your own hosts, tested as a user would: a domain created and started with plain libvirt
(not vmigrate's code) on the testbed's libvirt hosts, then `vmigrate run` given only the two
URIs, the domain and the service address, from the client host (where a user's machine would
be). The domain ends on the destination, the bill has its figures, nothing else changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_libvirtd_testbed import domain_xml, guest_answers

from vmigrate import libvirt_client
from vmigrate.guest.build import build_image
from vmigrate.guest.image import GuestImage
from vmigrate.measure.recorder import load_series
from vmigrate.measure.remote_proc import SAMPLER_NAME
from vmigrate.testbed.netns import netns_pids
from vmigrate.testbed.testbed import Testbed

VMIGRATE = str(Path(sys.executable).with_name("vmigrate"))
DOMAIN = "users-vm"


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_image()


@pytest.fixture
def users_vm(testbed: Testbed, image: GuestImage) -> Iterator[dict[str, Any]]:
    """A running domain the user made with libvirt on the source host; removed afterwards from
    wherever it ended up."""
    testbed.up(1000, libvirt=True)
    libvirt = libvirt_client.load()
    conns = {role: libvirt.open(testbed.libvirt_uri(role)) for role in ("source", "destination")}
    dom = conns["source"].defineXML(domain_xml(testbed, image, DOMAIN))
    dom.create()
    assert guest_answers(testbed, 60), "the user's VM did not come up"
    try:
        yield conns
    finally:
        for conn in conns.values():
            try:
                found = conn.lookupByName(DOMAIN)
            except libvirt.libvirtError:
                continue
            if found.isActive():
                found.destroy()
            found.undefine()
            conn.close()


def vmigrate_from_client(testbed: Testbed, *args: str) -> subprocess.CompletedProcess[str]:
    """`vmigrate ARGS` run on the client host (its network namespace)."""
    argv = ["ip", "netns", "exec", testbed.hosts["client"].netns, VMIGRATE, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def scenario_file(tmp_path: Path, testbed: Testbed, **hosts: str | bool) -> Path:
    fields = {
        "source_uri": f"qemu+tcp://{testbed.hosts['source'].ip}/system",
        "destination_uri": f"qemu+tcp://{testbed.hosts['destination'].ip}/system",
        "domain": DOMAIN,
        **hosts,
    }
    lines = ['name = "own-hosts"', "[hosts]", 'backend = "libvirt"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    lines += ["[service]", f'address = "{testbed.guest_ip}"']
    lines += ["[phases]", "warmup_s = 1", "baseline_s = 2", "after_s = 2"]
    path = tmp_path / "own-hosts.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def domains(conn: Any) -> dict[str, tuple[bool, bool]]:
    """Every domain of a daemon: name → (active, persistent)."""
    return {d.name(): (bool(d.isActive()), bool(d.isPersistent())) for d in conn.listAllDomains()}


def test_a_users_domain_moves_and_is_billed(
    testbed: Testbed, users_vm: dict[str, Any], tmp_path: Path
) -> None:
    conns = users_vm
    before = {role: domains(conn) for role, conn in conns.items()}
    inactive = libvirt_client.load().VIR_DOMAIN_XML_INACTIVE
    xml_before = conns["source"].lookupByName(DOMAIN).XMLDesc(inactive)
    out = tmp_path / "run"
    started = time.monotonic()
    done = vmigrate_from_client(
        testbed, "run", str(scenario_file(tmp_path, testbed)), "-o", str(out)
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["outcome"] == "completed", result["error"]
    ver = result["verification"]
    assert ver["running_on"] == "destination"
    assert ver["source_state_after"] == "postmigrate"
    assert ver["service_ok_after"] is True
    assert ver["memory_checksum_ok"] is None  # no agent of ours in a user's guest
    mig = result["migration"]
    assert mig["transferred_bytes"] > 0 and mig["total_time_s"] > 0
    assert mig["hypervisor_report"]["memory_processed_bytes"] == mig["transferred_bytes"]
    assert result["environment"]["backend"] == "libvirt"
    hosts = result["resources"]["hosts"]
    assert hosts["source"]["cpu_seconds"]["during"] > 0  # libvirt's domain CPU, measured
    service = result["service"]
    assert service["probe_sent"] > 0
    assert service["observed_downtime_ms"] is not None
    checks = {check["name"]: check["ok"] for check in result["checks"]}
    assert checks["observed_downtime_covers_reported"] is True
    assert checks["service_reachable_after_migration"] is True
    # Without the hosts' /proc (hosts.ssh) the uplink is not visible: not checked, not faked.
    assert checks["source_uplink_carried_the_migration"] is None
    # Only the migration changed: the domain runs on the destination (persistent there), the
    # source keeps its definition (shut off), no other domain came or went.
    after = {role: domains(conn) for role, conn in conns.items()}
    assert after["destination"] == {**before["destination"], DOMAIN: (True, True)}
    assert after["source"] == {**before["source"], DOMAIN: (False, True)}
    assert conns["source"].lookupByName(DOMAIN).XMLDesc(inactive) == xml_before
    assert time.monotonic() - started < 120


def test_undefine_source_removes_only_the_sources_definition(
    testbed: Testbed, users_vm: dict[str, Any], tmp_path: Path
) -> None:
    conns = users_vm
    before = {role: domains(conn) for role, conn in conns.items()}
    scenario = scenario_file(tmp_path, testbed)
    done = vmigrate_from_client(
        testbed, "run", str(scenario), "-o", str(tmp_path / "run"), "--undefine-source"
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    after = {role: domains(conn) for role, conn in conns.items()}
    assert after["source"] == {k: v for k, v in before["source"].items() if k != DOMAIN}
    assert after["destination"] == {**before["destination"], DOMAIN: (True, True)}


BAD_INPUT = {
    "domain-not-found": ({"domain": "no-such-vm"}, "has no domain 'no-such-vm'"),
    "unreachable-host": (
        {"source_uri": "qemu+tcp://10.241.0.3/system"},
        "cannot reach libvirt on the source",
    ),
    "unknown-uri-scheme": (
        {"source_uri": "xen+ssh://root@host/system"},
        "is not a libvirt URI for QEMU",
    ),
}


def test_bad_input_is_one_line_and_leaves_nothing(
    testbed: Testbed, users_vm: dict[str, Any], tmp_path: Path
) -> None:
    """Each case against the one user's VM (booted once for all of them)."""
    for case, (hosts, says) in BAD_INPUT.items():
        out = tmp_path / case / "run"
        out.parent.mkdir()
        done = vmigrate_from_client(
            testbed, "run", str(scenario_file(out.parent, testbed, **hosts)), "-o", str(out)
        )
        assert done.returncode == 2, (case, done.stdout + done.stderr)
        assert says in done.stderr, case
        assert len(done.stderr.strip().splitlines()) == 1, (case, done.stderr)
        assert not out.exists(), case
        assert users_vm["source"].lookupByName(DOMAIN).isActive(), case  # untouched


# --- hosts.ssh: each host's /proc over ssh -------------------------------------------------

SSH_ROLES = ("source", "destination")
KNOWN_HOSTS = Path("/root/.ssh/known_hosts")


def keygen(path: Path) -> Path:
    """A throwaway ed25519 key pair without passphrase at `path` (and path.pub)."""
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmigrate-test", "-f", str(path)]
    subprocess.run(argv, check=True)
    return path


def sshd_config(address: str, host_key: Path, authorized: Path) -> str:
    """sshd for one testbed host: root by key only, on the host's address. Its sessions see
    VMIGRATE_HOST_SCOPE=netns: the host is a network namespace, not the whole machine."""
    return "\n".join(
        [
            f"ListenAddress {address}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PidFile none",
            "SetEnv VMIGRATE_HOST_SCOPE=netns",
            "LogLevel VERBOSE",
        ]
    )


def sshd_pids(testbed: Testbed) -> list[int]:
    """sshd processes (listeners and sessions) in the hypervisor hosts' namespaces."""
    found = []
    for role in SSH_ROLES:
        for pid in netns_pids(testbed.hosts[role].netns):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    found.append(pid)
            except OSError:
                continue
    return found


def processes_naming(*needles: str) -> list[str]:
    """Command lines of running processes that contain one of `needles`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(needle in cmdline for needle in needles):
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def wait_until_gone(*needles: str, timeout_s: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := processes_naming(*needles)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def sshds(testbed: Testbed, users_vm: dict[str, Any], tmp_path: Path) -> Iterator[Path]:
    """An sshd inside the source's and the destination's libvirtd (mount and network
    namespace), as on a real host; yields the client key. root's known_hosts (libvirt's own
    ssh adds the hosts to it) is restored, every sshd killed by its PID."""
    key = keygen(tmp_path / "id_ed25519")
    host_key = keygen(tmp_path / "host_ed25519")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(Path(f"{key}.pub").read_text())
    had_ssh_dir = KNOWN_HOSTS.parent.exists()
    known = KNOWN_HOSTS.read_bytes() if KNOWN_HOSTS.exists() else None
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for role in SSH_ROLES:
            root = testbed.libvirt_root(role)  # /proc/PID/root of that host's libvirtd
            (root / "run" / "sshd").mkdir(mode=0o755, exist_ok=True)  # its private /run
            conf = tmp_path / f"sshd-{role}.conf"
            conf.write_text(sshd_config(testbed.hosts[role].ip, host_key, authorized))
            argv = ["nsenter", f"--target={root.parent.name}", "--mount", "--net",
                    "/usr/sbin/sshd", "-D", "-e", "-f", str(conf)]  # fmt: skip
            with open(tmp_path / f"sshd-{role}.log", "wb") as log:
                daemons[role] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        for role, daemon in daemons.items():
            log_path = tmp_path / f"sshd-{role}.log"
            while "Server listening" not in log_path.read_text():
                assert daemon.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        yield key
    finally:
        for daemon in daemons.values():
            daemon.terminate()
            daemon.wait(10)
        if known is not None:
            KNOWN_HOSTS.write_bytes(known)
        else:
            KNOWN_HOSTS.unlink(missing_ok=True)
            if not had_ssh_dir:
                shutil.rmtree(KNOWN_HOSTS.parent, ignore_errors=True)
    assert wait_until_gone(str(tmp_path), SAMPLER_NAME) == []  # no ssh, no remote loop
    deadline = time.monotonic() + 10
    while sshd_pids(testbed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sshd_pids(testbed) == []


def ssh_uri(testbed: Testbed, role: str, key: Path) -> str:
    return f"qemu+ssh://root@{testbed.hosts[role].ip}/system?keyfile={key}&no_verify=1"


def test_with_ssh_the_hosts_proc_is_billed_like_a_testbed_host(
    testbed: Testbed, sshds: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    uris = {f"{role}_uri": ssh_uri(testbed, role, sshds) for role in SSH_ROLES}
    scenario = scenario_file(tmp_path, testbed, **uris, ssh=True)
    done = vmigrate_from_client(testbed, "run", str(scenario), "-o", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["outcome"] == "completed", result["error"]
    assert result["verification"]["running_on"] == "destination"
    measured = result["environment"]["resources_measured"]
    assert "over ssh" in measured and f"uplink {testbed.hosts['source'].interface}" in measured
    _, links = load_series(out, "links")
    assert set(links["host"]) == set(SSH_ROLES)
    checks = {check["name"]: check for check in result["checks"]}
    uplink = checks["source_uplink_carried_the_migration"]
    assert uplink["ok"] is True, uplink
    source = result["resources"]["hosts"]["source"]
    assert source["cpu_seconds"]["during"] > 0 and source["cpu_pct_peak"] > 0
    assert source["qemu_cpu_seconds"]["vcpu"]["during"] > 0
    assert source["qemu_cpu_seconds"]["migration"]["during"] > 0
    assert source["rss_bytes"]["before"] > 0
    # The host is its network namespace: its libvirtd, QEMU and sshd; not the whole machine.
    assert {"libvirtd", "qemu-system-x86", "sshd"} <= set(source["processes"])
    assert "vmigrate-client" not in source["processes"]  # the client host's probe
    _, threads = load_series(out, "threads")
    assert {"vcpu", "migration"} <= set(threads["thread_class"])
    destination = result["resources"]["hosts"]["destination"]
    assert destination["net_rx_bytes"]["during"] >= result["migration"]["transferred_bytes"]
    log = (out / "vmigrate.log").read_text()
    assert "sampling /proc over ssh" in log and "sampler over ssh ended" not in log


def test_an_ssh_login_that_fails_is_one_line_and_leaves_nothing(
    testbed: Testbed, sshds: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # libvirt over TCP works; ssh (hosts.ssh) to those hosts, without no_verify, does not know
    # their host keys.
    scenario = scenario_file(tmp_path, testbed, ssh=True)
    done = vmigrate_from_client(testbed, "run", str(scenario), "-o", str(out))
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot sample the source's /proc over ssh" in done.stderr
    assert "Host key verification failed" in done.stderr
    assert not out.exists()
