"""Your own hosts, tested as a user would: a domain created and started with plain libvirt
(not vmigrate's code) on the testbed's libvirt hosts, then `vmigrate run` given only the two
URIs, the domain and the service address, from the client host (where a user's machine would
be). The domain ends on the destination, the bill has its figures, nothing else changed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_libvirtd_testbed import domain_xml, guest_answers

from vmigrate import libvirt_client
from vmigrate.guest.image import GuestImage, build_image
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


def scenario_file(tmp_path: Path, testbed: Testbed, **hosts: str) -> Path:
    fields = {
        "source_uri": f"qemu+tcp://{testbed.hosts['source'].ip}/system",
        "destination_uri": f"qemu+tcp://{testbed.hosts['destination'].ip}/system",
        "domain": DOMAIN,
        **hosts,
    }
    lines = ['name = "own-hosts"', "[hosts]", 'backend = "libvirt"']
    lines += [f'{key} = "{value}"' for key, value in fields.items()]
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


@pytest.mark.parametrize(
    ("hosts", "says"),
    [
        ({"domain": "no-such-vm"}, "has no domain 'no-such-vm'"),
        ({"source_uri": "qemu+tcp://10.241.0.3/system"}, "cannot reach libvirt on the source"),
        ({"source_uri": "xen+ssh://root@host/system"}, "is not a libvirt URI for QEMU"),
    ],
    ids=["domain-not-found", "unreachable-host", "unknown-uri-scheme"],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    testbed: Testbed, users_vm: dict[str, Any], tmp_path: Path, hosts: dict[str, str], says: str
) -> None:
    out = tmp_path / "run"
    done = vmigrate_from_client(
        testbed, "run", str(scenario_file(tmp_path, testbed, **hosts)), "-o", str(out)
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()
    assert users_vm["source"].lookupByName(DOMAIN).isActive()  # the user's VM untouched
