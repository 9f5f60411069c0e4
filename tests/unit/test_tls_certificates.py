"""The certificates of an encrypted migration: one CA per run, per host a server certificate
for its address and a client certificate, each verifying against the CA."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from vmigrate.config import STRATEGIES, MigrationSpec
from vmigrate.hypervisor import tls
from vmigrate.hypervisor.qemu_migration import (
    TLS_CREDS_ID,
    add_tls_creds,
    qmp_settings,
    tls_creds_object,
)
from vmigrate.migration.strategy import plan_for

HOSTS = {"source": "10.241.0.1", "destination": "10.241.0.2"}


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    dirs = {role: tmp_path / role for role in HOSTS}
    tls.make_certificates({role: (HOSTS[role], dirs[role]) for role in HOSTS}, "unit")
    return dirs


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_each_host_gets_the_files_qemu_and_libvirt_read(certs: dict[str, Path]) -> None:
    for directory in certs.values():
        names = {p.name for p in directory.iterdir()}
        assert names == {tls.CA_CERT, tls.SERVER_CERT, tls.SERVER_KEY, tls.CLIENT_CERT,
                         tls.CLIENT_KEY}  # fmt: skip
        for key in (tls.SERVER_KEY, tls.CLIENT_KEY):
            assert stat.S_IMODE((directory / key).stat().st_mode) == 0o600
    # One CA for the run: a source's client certificate is trusted by the destination's CA.
    assert (certs["source"] / tls.CA_CERT).read_bytes() == (
        certs["destination"] / tls.CA_CERT
    ).read_bytes()


def test_a_server_certificate_verifies_for_its_own_address_only(certs: dict[str, Path]) -> None:
    ca = load(certs["source"] / tls.CA_CERT)
    store = Store([ca])
    now = dt.datetime.now(dt.UTC)
    for role, address in HOSTS.items():
        server = load(certs[role] / tls.SERVER_CERT)
        san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]
        verifier = (
            PolicyBuilder()
            .store(store)
            .time(now)
            .build_server_verifier(x509.IPAddress(ipaddress.ip_address(address)))
        )
        verifier.verify(server, [])
    other = PolicyBuilder().store(store).time(now)
    wrong = other.build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.241.0.3")))
    with pytest.raises(VerificationError):
        wrong.verify(load(certs["destination"] / tls.SERVER_CERT), [])


def test_client_certificates_verify_as_clients_and_not_as_servers(
    certs: dict[str, Path],
) -> None:
    ca = load(certs["destination"] / tls.CA_CERT)
    verifier = PolicyBuilder().store(Store([ca])).time(dt.datetime.now(dt.UTC))
    client = load(certs["source"] / tls.CLIENT_CERT)
    verifier.build_client_verifier().verify(client, [])
    purposes = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(purposes) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server_verifier = verifier.build_server_verifier(
        x509.IPAddress(ipaddress.ip_address(HOSTS["source"]))
    )
    with pytest.raises(VerificationError):
        server_verifier.verify(client, [])


def test_a_long_run_name_still_makes_a_ca(tmp_path: Path) -> None:
    """A sweep's run directories are longer than a certificate name may be."""
    label = "precopy-migration.tls=true-strategy=multifd-20250101-120000-r3-" * 2
    tls.make_certificates({"source": (HOSTS["source"], tmp_path)}, label)
    assert label[:20] in load(tmp_path / tls.CA_CERT).subject.rfc4514_string()


def test_a_new_run_gets_a_new_ca(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    tls.make_certificates({"source": (HOSTS["source"], first)}, "one")
    tls.make_certificates({"source": (HOSTS["source"], second)}, "two")
    assert load(first / tls.CA_CERT) != load(second / tls.CA_CERT)
    with pytest.raises(ValueError):
        load(second / tls.SERVER_CERT).verify_directly_issued_by(load(first / tls.CA_CERT))


def test_tls_names_the_credentials_on_both_ends_and_the_hostname_on_the_source() -> None:
    caps, source, destination = qmp_settings(plan_for(MigrationSpec(tls=True)), "10.241.0.2")
    assert {c for c, on in caps.items() if on} == {"events"}  # a parameter, not a capability
    assert source["tls-creds"] == TLS_CREDS_ID
    assert source["tls-hostname"] == "10.241.0.2"
    assert destination == {"tls-creds": TLS_CREDS_ID}
    plain = qmp_settings(plan_for(MigrationSpec()), "10.241.0.2")
    assert plain[1]["tls-creds"] == "" and plain[2] == {"tls-creds": ""}  # TLS off, said
    assert "tls-hostname" not in plain[1]


def test_tls_goes_with_the_strategys_own_settings() -> None:
    _, source, destination = qmp_settings(
        plan_for(MigrationSpec(strategy="multifd", multifd_channels=4, tls=True)), "10.241.0.2"
    )
    assert destination == {"multifd-channels": 4, "multifd-compression": "none",
                           "tls-creds": TLS_CREDS_ID}  # fmt: skip
    assert source["multifd-channels"] == 4 and source["tls-creds"] == TLS_CREDS_ID


def test_the_credentials_object_verifies_the_peer(tmp_path: Path) -> None:
    assert tls_creds_object(tmp_path, "server") == {
        "qom-type": "tls-creds-x509",
        "id": TLS_CREDS_ID,
        "dir": str(tmp_path),
        "endpoint": "server",
        "verify-peer": True,
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_takes_tls(strategy: str) -> None:
    """QEMU 10.0 refuses TLS only with zero-copy-send and mapped-ram, which no strategy uses."""
    spec = MigrationSpec(strategy=strategy, tls=True)  # type: ignore[arg-type]
    assert plan_for(spec).tls


class FakeQemu:
    """Answers qom-list and records object-add, as QEMU's QMP would."""

    def __init__(self) -> None:
        self.objects: list[dict[str, Any]] = []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        if command == "qom-list":
            return [{"name": o["id"], "type": "child<tls-creds-x509>"} for o in self.objects]
        assert command == "object-add" and arguments is not None
        if any(o["id"] == arguments["id"] for o in self.objects):
            raise AssertionError("QEMU refuses a second object with the same id")
        self.objects.append(arguments)


def test_a_source_that_migrates_again_keeps_its_credentials(tmp_path: Path) -> None:
    """After a cancelled attempt (on_stall = auto-converge) the same source is configured
    again: its credentials are there already, and QEMU would refuse them twice."""
    source = FakeQemu()
    for _ in range(2):
        asyncio.run(add_tls_creds(source, tmp_path, "client"))  # type: ignore[arg-type]
    assert [o["endpoint"] for o in source.objects] == ["client"]
