"""A throw-away PKI for TLS listener tests: a CA, server certificates by name, client
certificates (from this CA or another, expired ones), each written as cert and key PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Issued:
    """A certificate and its key on disk."""

    cert: Path
    key: Path
    certificate: x509.Certificate

    @property
    def pair(self) -> tuple[str, str]:
        return str(self.cert), str(self.key)

    def sni(self, server_name: str) -> dict[str, str]:
        """This certificate as one ``[server.listeners.tls] certificates`` entry."""
        return {"server_name": server_name, "cert_file": str(self.cert), "key_file": str(self.key)}


def _name(cn: str, org: str | None = None) -> x509.Name:
    """A subject as CAs write them: the organisation, then the common name (RFC 4514 strings
    list them the other way round: ``CN=...,O=...``)."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


class Authority:
    """One CA that signs certificates into ``directory``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.slug = name.replace(" ", "-").lower()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{self.slug}.pem"
        self.path.write_bytes(self.certificate.public_bytes(_PEM))

    def issue(
        self,
        file_name: str,
        cn: str,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        uris: Sequence[str] = (),
        emails: Sequence[str] = (),
        org: str | None = None,
        client: bool = False,
        days: float = 30,
        expired: bool = False,
    ) -> Issued:
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        if expired:
            start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)
        names: list[Any] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.RFC822Name(e) for e in emails]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{file_name}.pem"
        key_path = self.directory / f"{file_name}.key"
        cert_path.write_bytes(cert.public_bytes(_PEM))
        key_path.write_bytes(
            key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return Issued(cert_path, key_path, cert)


class PKI:
    """The certificates the TLS listener tests use, minted into ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = Authority(directory, "avx test CA")
        self.other_ca = Authority(directory, "other CA")
        self.default = self.ca.issue("default", "localhost", dns=["localhost"], ips=["127.0.0.1"])
        self.api = self.ca.issue("api", "api.example.test", dns=["api.example.test"])
        self.wild = self.ca.issue("wild", "*.apps.example.test", dns=["*.apps.example.test"])
        self.billing = self.ca.issue(
            "billing",
            "billing",
            org="Acme",
            uris=["spiffe://acme/ns/prod/sa/billing"],
            dns=["billing.acme.internal"],
            client=True,
        )
        self.reports = self.ca.issue("reports", "reports", org="Acme", client=True)
        self.stranger = self.other_ca.issue("stranger", "billing", org="Acme", client=True)
        self.expired = self.ca.issue("expired", "old", org="Acme", client=True, expired=True)
