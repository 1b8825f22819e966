"""The TLS rows' certificates, minted at run time with cryptography: a CA (ECDSA P-256, self-signed)
and a server certificate from it (ECDSA P-256, SAN ``DNS:localhost`` and ``IP:127.0.0.1``), in
PEM files that nginx and the gateway both load; clients verify against the CA.

    .venv/bin/python bench/tls_certs.py DIR     # writes DIR/ca.pem, DIR/server.pem, DIR/server.key
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class BenchCerts:
    ca_file: Path
    cert_file: Path  # the server certificate alone (its CA is what clients trust)
    key_file: Path  # its private key, PKCS#8 PEM, unencrypted

    def describe(self) -> str:
        return (
            "an ECDSA P-256 server certificate for `localhost` and `127.0.0.1` (SAN), signed "
            "(ECDSA with SHA-256) by an ECDSA P-256 CA"
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "avx-gateway bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def mint(directory: Path) -> BenchCerts:
    """A CA and a server certificate for 127.0.0.1/localhost, valid from an hour ago for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("avx-gateway bench CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    certs = BenchCerts(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    certs.ca_file.write_bytes(ca.public_bytes(pem))
    certs.cert_file.write_bytes(cert.public_bytes(pem))
    certs.key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    certs.key_file.chmod(0o600)  # read by nginx's master and the gateway, both this user
    return certs


if __name__ == "__main__":
    made = mint(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(made.ca_file, made.cert_file, made.key_file)
