"""TLS on the gateway's listeners and what a TLS connection tells about its client.

:class:`ServerTLS` is the TLS side of one ``[[server.listeners]]`` entry: pyOpenSSL contexts
(one per certificate, picked by SNI), TLS 1.2 ciphers with forward secrecy only, ALPN, client
certificates (``client_auth``), swapped as a whole on reload so that open connections keep the
context they started with. Twisted's ``TLSMemoryBIOFactory`` asks it for each connection's
``OpenSSL.SSL.Connection`` (``IOpenSSLServerConnectionCreator``).

:func:`connection_tls` reads the facts of one connection once (protocol, cipher, SNI, the
verified client certificate) into a :class:`TlsInfo` that requests on that connection share.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ._configmodel import ListenerTlsConfig, TlsCertificate

#: TLS 1.2 ciphers: ECDHE key exchange and AEAD only (Mozilla's "intermediate" list). TLS 1.3
#: has its own, all acceptable, suites.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
#: What ALPN offers: HTTP/1.1 only, or h2 first where the listener speaks HTTP/2.
ALPN_PROTOCOLS: tuple[bytes, ...] = (b"http/1.1",)
ALPN_H2: tuple[bytes, ...] = (b"h2", b"http/1.1")


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; ``key`` is the config key at fault
    (``cert_file``, ``key_file``, ``client_cert_file``...), the message names the path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# -- files ------------------------------------------------------------------------------------


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsFileError(key, f"{path!r}: cannot be read: {e.strerror or e}") from None


def load_certificate(
    pair: TlsCertificate, key_prefix: str = ""
) -> tuple[list[x509.Certificate], Any]:
    """The certificate chain and private key of ``pair``, checked: PEM, a key that matches the
    first certificate. Raises :class:`TlsFileError`."""
    cert_key, key_key = key_prefix + "cert_file", key_prefix + "key_file"
    data = _read(pair.cert_file, cert_key)
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFileError(cert_key, f"{pair.cert_file!r}: no PEM certificate in it") from None
    key_data = _read(pair.key_file, key_key)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as e:
        why = "it is encrypted (give an unencrypted key)" if "encrypted" in str(e) else str(e)
        raise TlsFileError(
            key_key, f"{pair.key_file!r}: not a usable PEM private key: {why}"
        ) from None
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = (
        chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if ours != theirs:
        raise TlsFileError(
            key_key,
            f"{pair.key_file!r} is not the private key of the certificate in {pair.cert_file!r}",
        )
    return chain, key


def load_ca_file(path: str, key: str = "client_ca_file") -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle (at least one). Raises :class:`TlsFileError`."""
    data = _read(path, key)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFileError(key, f"{path!r}: no PEM certificate in it") from None
    return found


def expiry(cert: x509.Certificate) -> float:
    """The certificate's ``notAfter`` as a POSIX timestamp."""
    not_after = getattr(cert, "not_valid_after_utc", None)
    if not_after is None:  # cryptography < 42
        not_after = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return float(not_after.timestamp())


def certificate_names(cert: x509.Certificate) -> list[str]:
    """DNS names of a certificate (SAN), or its CN when it has none."""
    try:
        sans = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        names = list(sans.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


# -- the server side ----------------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The TLS contexts of one listener: the default certificate's, and one per SNI name.

    ``reload(config)`` builds new contexts from the files and swaps them in only when all of
    them load; connections already open keep theirs, so nothing is dropped.
    """

    def __init__(
        self, config: ListenerTlsConfig, name: str, alpn: Sequence[bytes] = ALPN_PROTOCOLS
    ) -> None:
        #: The listener's endpoint string (metrics label, session id context).
        self.name = name
        #: The protocols ALPN may choose, in the server's order of preference.
        self.alpn = tuple(alpn)
        self.config = config
        self._default, self._by_name, self.certificates = self.build(config)

    def build(self, config: ListenerTlsConfig) -> Any:
        """Read every file of ``config`` into new contexts (for :meth:`install`); raises
        :class:`TlsFileError` when one cannot be used. Nothing running changes."""
        return self._build(config)

    def install(self, config: ListenerTlsConfig, built: Any) -> None:
        """Serve new connections with contexts :meth:`build` made; open ones keep theirs."""
        self.config = config
        self._default, self._by_name, self.certificates = built

    def expiries(self) -> list[tuple[str, str, float]]:
        """(listener, server name, notAfter) of every certificate, for the expiry gauge."""
        return [(self.name, name, expiry(cert)) for name, cert in self.certificates]

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._default, None)
        connection.set_app_data(tlsProtocol)
        return connection

    def context_for(self, server_name: str) -> SSL.Context | None:
        """The context of the certificate for an SNI name (exact, then one-label wildcard)."""
        by_name = self._by_name
        found = by_name.get(server_name)
        if found is None and "." in server_name:
            found = by_name.get("*." + server_name.split(".", 1)[1])
        return found

    # -- building ---------------------------------------------------------------------------------

    def _build(
        self, config: ListenerTlsConfig
    ) -> tuple[SSL.Context, dict[str, SSL.Context], list[tuple[str, x509.Certificate]]]:
        ca: list[x509.Certificate] = []
        if config.client_auth != "none" and config.client_ca_file is not None:
            ca = load_ca_file(config.client_ca_file)
        certificates: list[tuple[str, x509.Certificate]] = []
        chain, key = load_certificate(config.default)
        default = self._context(config, chain, key, ca, sni=bool(config.certificates))
        default_name = config.default.server_name or _first(certificate_names(chain[0]))
        certificates.append((default_name, chain[0]))
        by_name: dict[str, SSL.Context] = {}
        for i, pair in enumerate(config.certificates):
            try:
                sni_chain, sni_key = load_certificate(pair)
            except TlsFileError as e:
                raise TlsFileError(f"certificates[{i}].{e.key}", str(e)) from None
            by_name[pair.server_name] = self._context(config, sni_chain, sni_key, ca)
            certificates.append((pair.server_name, sni_chain[0]))
        return default, by_name, certificates

    def _context(
        self,
        config: ListenerTlsConfig,
        chain: Sequence[x509.Certificate],
        key: Any,
        ca: Sequence[x509.Certificate],
        sni: bool = False,
    ) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        if sni:  # the default context picks the others by the client's server name
            ctx.set_tlsext_servername_callback(self._server_name)
        ctx.set_min_proto_version(_VERSIONS[config.min_version])
        ctx.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
        )
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
        # Sessions resume only on the listener (and the client-certificate policy) they
        # started on.
        ctx.set_session_id(hashlib.sha256(self.name.encode("utf-8")).digest()[:32])
        ctx.set_alpn_select_callback(self._select_alpn)
        if config.client_auth != "none":
            store = ctx.get_cert_store()
            assert store is not None
            for cert in ca:
                store.add_cert(crypto.X509.from_cryptography(cert))
                ctx.add_client_ca(cert)
            mode = SSL.VERIFY_PEER
            if config.client_auth == "require":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            ctx.set_verify(mode, _verified)
        # Last: pyOpenSSL < 26 checks the list on a throw-away Connection, after which it
        # warns about any other change to the context.
        ctx.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
        return ctx

    def _select_alpn(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in self.alpn:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def _server_name(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        ctx = self.context_for(name.decode("ascii", "replace").lower().rstrip("."))
        if ctx is not None:
            connection.set_context(ctx)


connectionDone = Failure(CONNECTION_DONE)


class _ServerTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, telling its factory about handshakes that failed."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        why = self._reason
        failed = not self._handshakeDone and why is not None and isinstance(why.value, SSL.Error)
        super().connectionLost(reason)
        if failed:
            self.factory.handshake_failed(why)


class TLSServerFactory(TLSMemoryBIOFactory):
    """TLS over ``wrapped`` (the HTTP server factory) with a :class:`ServerTLS`'s contexts."""

    protocol = _ServerTLSProtocol
    log = Logger()

    def __init__(self, tls: ServerTLS, wrapped: Any) -> None:
        super().__init__(tls, False, wrapped)
        self.tls = tls
        #: Called once per failed handshake (metrics), or None.
        self.on_handshake_error: Callable[[], None] | None = None

    def handshake_failed(self, reason: Failure) -> None:
        if self.on_handshake_error is not None:
            self.on_handshake_error()
        self.log.debug(
            "TLS handshake failed on {listener}: {why}",
            listener=self.tls.name,
            why=reason.getErrorMessage(),
        )


def _verified(connection: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's own verdict on each certificate of the client's chain: a certificate the
    client presents must be valid, also with ``client_auth = "optional"``."""
    return bool(ok)


def _first(names: Sequence[str]) -> str:
    return names[0] if names else ""


# -- what a connection tells --------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCertificate:
    """The verified client certificate of a TLS connection."""

    subject: str
    issuer: str
    dns: tuple[str, ...]
    uris: tuple[str, ...]
    emails: tuple[str, ...]
    serial: str
    #: SHA-256 of the DER certificate, lowercase hex (Envoy's ``Hash``).
    sha256: str
    #: The same digest, base64url without padding (RFC 8705 ``x5t#S256``).
    x5t_s256: str
    not_before: str
    not_after: str
    common_name: str
    pem: bytes

    @property
    def sans(self) -> tuple[str, ...]:
        return self.uris + self.dns + self.emails

    @classmethod
    def from_x509(cls, cert: x509.Certificate) -> ClientCertificate:
        der = cert.public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).digest()
        try:
            san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
            dns = tuple(san.get_values_for_type(x509.DNSName))
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
            emails = tuple(san.get_values_for_type(x509.RFC822Name))
        except x509.ExtensionNotFound:
            dns = uris = emails = ()
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            dns=dns,
            uris=uris,
            emails=emails,
            serial=format(cert.serial_number, "x"),
            sha256=digest.hex(),
            x5t_s256=base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"),
            not_before=_iso(cert, "not_valid_before"),
            not_after=_iso(cert, "not_valid_after"),
            common_name=str(cns[0].value) if cns else "",
            pem=cert.public_bytes(serialization.Encoding.PEM),
        )

    def subject_matches(self, subjects: Iterable[str]) -> bool:
        """Whether the subject is one of ``subjects`` (RFC 4514 strings, compared as names)."""
        mine = normalise_subject(self.subject)
        return any(normalise_subject(s) == mine for s in subjects)

    def xfcc(self) -> bytes:
        """This certificate as one ``X-Forwarded-Client-Cert`` element (Envoy's format)."""
        parts = [
            f"Hash={self.sha256}",
            "Cert=" + _xfcc_quoted(quote(self.pem.decode("ascii"), safe="")),
            "Subject=" + _xfcc_quoted(self.subject),
        ]
        parts += [f"URI={_xfcc_value(u)}" for u in self.uris]
        parts += [f"DNS={_xfcc_value(d)}" for d in self.dns]
        return ";".join(parts).encode("utf-8")


def _iso(cert: x509.Certificate, name: str) -> str:
    value = getattr(cert, name + "_utc", None)
    if value is None:
        value = getattr(cert, name).replace(tzinfo=datetime.timezone.utc)
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _xfcc_quoted(value: str) -> str:
    """A double-quoted XFCC value: double quotes in it escaped by a backslash (Envoy's rule;
    the RFC 4514 escapes of a subject stay as they are)."""
    return '"' + value.replace('"', '\\"') + '"'


def _xfcc_value(value: str) -> str:
    return _xfcc_quoted(value) if any(c in value for c in ',;="') else value


@dataclass(frozen=True)
class TlsInfo:
    """What one TLS connection tells: shared by every request on it."""

    version: str
    cipher: str
    server_name: str
    alpn: str
    #: The verified client certificate, or None.
    client_cert: ClientCertificate | None


def connection_tls(transport: Any) -> TlsInfo | None:
    """The facts of the TLS connection under ``transport`` (a ``TLSMemoryBIOProtocol``), or
    None if it has none (not TLS, or the handshake is not done)."""
    handle = getattr(transport, "getHandle", None)
    connection = handle() if handle is not None else None
    if not isinstance(connection, SSL.Connection):
        return None
    version = connection.get_protocol_version_name()
    cipher = connection.get_cipher_name() or ""
    name = connection.get_servername()
    alpn = connection.get_alpn_proto_negotiated()
    client = None
    peer = connection.get_peer_certificate()
    # A certificate is only ever asked for with VERIFY_PEER, which fails the handshake when
    # the certificate does not verify: one that is here was verified.
    if peer is not None and connection.get_context().get_verify_mode() & SSL.VERIFY_PEER:
        client = ClientCertificate.from_x509(peer.to_cryptography())
    return TlsInfo(
        version=version,
        cipher=cipher,
        server_name=name.decode("ascii", "replace") if name else "",
        alpn=alpn.decode("ascii", "replace") if alpn else "",
        client_cert=client,
    )


def normalise_subject(text: str) -> tuple[tuple[str, str], ...]:
    """An RFC 4514 distinguished name as comparable pairs (attribute names upper-cased,
    values unescaped, ``CN = a`` and ``cn=a`` equal). Raises ValueError when malformed."""
    pairs: list[tuple[str, str]] = []
    for rdn in _split(text, ","):
        for ava in _split(rdn, "+"):
            name, sep, value = ava.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{ava.strip()!r} is not attribute=value")
            pairs.append((name.strip().upper(), _unescape(value.strip())))
    if not pairs:
        raise ValueError("it is empty")
    return tuple(pairs)


def _split(text: str, sep: str) -> list[str]:
    parts, current, escaped = [], [], False
    for c in text:
        if escaped:
            current.append("\\" + c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1 : i + 3]
            if len(nxt) == 2 and all(h in "0123456789abcdefABCDEF" for h in nxt):
                out.append(chr(int(nxt, 16)))
                i += 3
                continue
            out.append(value[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


__all__ = [
    "ALPN_PROTOCOLS",
    "ClientCertificate",
    "ServerTLS",
    "TlsFileError",
    "TlsInfo",
    "TLSServerFactory",
    "certificate_names",
    "connection_tls",
    "expiry",
    "load_ca_file",
    "load_certificate",
    "normalise_subject",
]
