"""x509 certificates for an encrypted migration (`migration.tls = true`), made for one run.

One throwaway CA signs, for every hypervisor host, a server certificate (the source checks it
against the destination's address) and a client certificate (the destination verifies the
source's: verify-peer), both naming the host's address. Each host gets a directory in
the layout QEMU's tls-creds-x509 object and libvirt's migrate_tls_x509_cert_dir read:

    ca-cert.pem  server-cert.pem  server-key.pem  client-cert.pem  client-key.pem

Every host gets both pairs, since a migration may go either way. The CA's key is never written:
nothing else can be signed with it once the run has its certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca-cert.pem"
SERVER_CERT, SERVER_KEY = "server-cert.pem", "server-key.pem"
CLIENT_CERT, CLIENT_KEY = "client-cert.pem", "client-key.pem"
# Long enough for any run (a sweep makes new ones per run); a little back-dated so a clock
# read a moment later on another host never finds them "not yet valid".
VALID_FOR = dt.timedelta(days=2)
BACKDATE = dt.timedelta(minutes=5)
CN_MAX = 64  # ub-common-name, RFC 5280


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    """A subject; its common name cut to the 64 characters x509 allows (a run's name is
    free-form: a sweep's run directories are longer)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmigrate"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:CN_MAX]),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key: as good as RSA-3072 for this, and generated in a millisecond."""
    return ec.generate_private_key(ec.SECP256R1())


def _sign(builder: x509.CertificateBuilder, issuer: _Issuer, now: dt.datetime) -> x509.Certificate:
    return (
        builder.issuer_name(issuer.name)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALID_FOR)
        .sign(issuer.key, hashes.SHA256())
    )


def _ca(label: str, now: dt.datetime) -> tuple[_Issuer, x509.Certificate]:
    key = _key()
    issuer = _Issuer(_name(f"vmigrate migration CA ({label})"), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(issuer.name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    return issuer, _sign(builder, issuer, now)


def _usage(ca: bool) -> x509.KeyUsage:
    """Key usage; QEMU refuses a critical one that lacks keyCertSign (CA) or digitalSignature
    and keyEncipherment (server, client)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    issuer: _Issuer, common_name: str, address: str, server: bool, now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server or client certificate of the host at `address` (its subject alternative name:
    what a client checks a server against, and who a client is)."""
    key = _key()
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    return key, _sign(builder, issuer, now)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write `path` afresh; a private key readable by its owner only, from its first byte."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificates(hosts: Mapping[str, tuple[str, Path]], label: str) -> None:
    """For every host `role -> (address, directory)`: a directory holding the run's CA and the
    host's server (SAN = address) and client certificates and keys. `label` names the run in
    the CA's subject."""
    now = dt.datetime.now(dt.UTC)
    issuer, ca_cert = _ca(label, now)
    for role, (address, directory) in hosts.items():
        directory.mkdir(parents=True, exist_ok=True)
        _write(directory / CA_CERT, _pem(ca_cert))
        server_key, server_cert = _leaf(issuer, address, address, True, now)
        _write(directory / SERVER_CERT, _pem(server_cert))
        _write(directory / SERVER_KEY, _key_pem(server_key), private=True)
        client_key, client_cert = _leaf(issuer, f"vmigrate-{role}", address, False, now)
        _write(directory / CLIENT_CERT, _pem(client_cert))
        _write(directory / CLIENT_KEY, _key_pem(client_key), private=True)
