"""tls.py, auth/mtls.py, the auth filter's asynchronous and certificate-bound paths and the
PROXY protocol wrapper, without sockets: TLS handshakes run between pyOpenSSL connections on
memory BIOs, the PROXY wrapper on a StringTransport."""

from __future__ import annotations

import base64
import hashlib
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from avx_twisted._configmodel import (
    ListenerConfig,
    ListenerTlsConfig,
    MtlsPolicy,
    TlsCertificate,
)
from avx_twisted.auth import AuthError, Identity
from avx_twisted.auth.filter import AuthFilter
from avx_twisted.auth.mtls import MtlsAuthenticator
from avx_twisted.listeners import ProxyProtocolFactory, listener_factory
from avx_twisted.tls import (
    ClientCertificate,
    ServerTLS,
    TlsFileError,
    TLSServerFactory,
    connection_tls,
    load_certificate,
    normalise_subject,
)
from tests.support.pki import PKI, Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def listener_tls(pki: PKI, **extra: Any) -> ListenerTlsConfig:
    return ListenerTlsConfig(str(pki.default.cert), str(pki.default.key), **extra)


def client_context(pki: PKI, client: Issued | None = None, alpn: list[bytes] | None = None):
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(str(pki.ca.path))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    if client is not None:
        ctx.use_certificate_chain_file(str(client.cert))
        ctx.use_privatekey_file(str(client.key))
    if alpn:
        ctx.set_alpn_protos(alpn)
    return ctx


def handshake(
    server_tls: ServerTLS, client_ctx: SSL.Context, server_name: bytes | None = b"localhost"
) -> tuple[SSL.Connection, SSL.Connection]:
    """Run a TLS handshake between memory BIOs; raises SSL.Error as the server sees it."""
    server = server_tls.serverConnectionForTLS(None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    if server_name:
        client.set_tlsext_host_name(server_name)
    client.set_connect_state()
    done = {"client": False, "server": False}
    for _ in range(50):
        for name, conn, peer in (("client", client, server), ("server", server, client)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except SSL.WantReadError:
                    pass
            _move(conn, peer)
        if all(done.values()):
            # TLS 1.3: the server reads the client's certificate (and may refuse it) only now.
            try:
                server.recv(1)
            except SSL.WantReadError:
                pass
            return client, server
    raise AssertionError("handshake did not finish")


def _move(source: SSL.Connection, target: SSL.Connection) -> None:
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return
        target.bio_write(data)


class _Transport:
    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


# -- files and contexts --------------------------------------------------------------------------


def test_load_certificate_names_the_key_at_fault(pki, tmp_path):
    with pytest.raises(TlsFileError) as caught:
        load_certificate(TlsCertificate(str(pki.default.cert), str(pki.api.key)))
    assert caught.value.key == "key_file"
    assert "is not the private key of the certificate" in str(caught.value)
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing")
    with pytest.raises(TlsFileError) as caught:
        load_certificate(TlsCertificate(str(empty), str(pki.default.key)), key_prefix="client_")
    assert caught.value.key == "client_cert_file"
    with pytest.raises(TlsFileError, match="cannot be read"):
        load_certificate(TlsCertificate(str(tmp_path / "gone.pem"), str(pki.default.key)))


def test_sni_selects_exact_then_wildcard_then_default(pki):
    tls = ServerTLS(
        listener_tls(
            pki,
            certificates=(
                TlsCertificate(str(pki.api.cert), str(pki.api.key), "api.example.test"),
                TlsCertificate(str(pki.wild.cert), str(pki.wild.key), "*.apps.example.test"),
            ),
        ),
        "tcp:8443",
    )
    seen = {}
    for name in (b"api.example.test", b"shop.apps.example.test", b"other.test", None):
        client, server = handshake(tls, client_context(pki), name)
        cert = client.get_peer_certificate().to_cryptography()
        seen[name] = cert.subject.rfc4514_string()
    assert seen == {
        b"api.example.test": "CN=api.example.test",
        b"shop.apps.example.test": "CN=*.apps.example.test",
        b"other.test": "CN=localhost",
        None: "CN=localhost",
    }
    assert sorted(name for _, name, _ in tls.expiries()) == [
        "*.apps.example.test",
        "api.example.test",
        "localhost",
    ]


def test_alpn_chooses_http11_and_survives_clients_without_it(pki):
    tls = ServerTLS(listener_tls(pki), "tcp:8443")
    client, _ = handshake(tls, client_context(pki, alpn=[b"h2", b"http/1.1"]))
    assert client.get_alpn_proto_negotiated() == b"http/1.1"
    client, _ = handshake(tls, client_context(pki, alpn=[b"h2"]))
    assert client.get_alpn_proto_negotiated() == b""


def test_client_auth_require_and_the_facts_of_a_verified_certificate(pki):
    tls = ServerTLS(
        listener_tls(pki, client_auth="require", client_ca_file=str(pki.ca.path)), "tcp:8443"
    )
    _, server = handshake(tls, client_context(pki, pki.billing))
    info = connection_tls(_Transport(server))
    assert info is not None and info.version in ("TLSv1.2", "TLSv1.3")
    assert info.server_name == "localhost"
    cert = info.client_cert
    assert cert is not None
    assert cert.subject == "CN=billing,O=Acme"
    assert cert.issuer == "CN=avx test CA"
    assert cert.uris == ("spiffe://acme/ns/prod/sa/billing",)
    assert cert.dns == ("billing.acme.internal",)
    der = pki.billing.certificate.public_bytes(serialization.Encoding.DER)
    assert cert.sha256 == hashlib.sha256(der).hexdigest()
    assert cert.x5t_s256 == base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip(
        "="
    )
    assert cert.serial == format(pki.billing.certificate.serial_number, "x")
    for client in (None, pki.stranger, pki.expired):
        with pytest.raises(SSL.Error):
            handshake(tls, client_context(pki, client))


def test_client_auth_optional_accepts_none_but_refuses_a_bad_one(pki):
    tls = ServerTLS(
        listener_tls(pki, client_auth="optional", client_ca_file=str(pki.ca.path)), "tcp:8443"
    )
    _, server = handshake(tls, client_context(pki))
    info = connection_tls(_Transport(server))
    assert info is not None and info.client_cert is None
    with pytest.raises(SSL.Error):
        handshake(tls, client_context(pki, pki.stranger))


def test_without_client_auth_a_certificate_is_never_reported(pki):
    tls = ServerTLS(listener_tls(pki), "tcp:8443")
    _, server = handshake(tls, client_context(pki, pki.billing))
    info = connection_tls(_Transport(server))
    assert info is not None and info.client_cert is None


def test_min_version_tls13_refuses_tls12_clients(pki):
    tls = ServerTLS(listener_tls(pki, min_version="TLSv1.3"), "tcp:8443")
    ctx = client_context(pki)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    with pytest.raises(SSL.Error):
        handshake(tls, ctx)


def test_a_failed_build_keeps_the_running_contexts(pki, tmp_path):
    tls = ServerTLS(listener_tls(pki), "tcp:8443")
    broken = ListenerTlsConfig(str(pki.default.cert), str(pki.api.key))
    with pytest.raises(TlsFileError):
        tls.build(broken)
    client, _ = handshake(tls, client_context(pki))
    assert (
        client.get_peer_certificate().to_cryptography().subject.rfc4514_string() == "CN=localhost"
    )
    fresh = listener_tls(pki)
    fresh = ListenerTlsConfig(str(pki.api.cert), str(pki.api.key))
    tls.install(fresh, tls.build(fresh))
    client, _ = handshake(tls, client_context(pki), b"api.example.test")
    assert client.get_peer_certificate().to_cryptography().subject.rfc4514_string() == (
        "CN=api.example.test"
    )


def test_connection_tls_is_none_without_tls():
    assert connection_tls(StringTransport()) is None


# -- names and X-Forwarded-Client-Cert ------------------------------------------------------


def test_subjects_compare_as_names():
    assert normalise_subject("CN=billing,O=Acme") == normalise_subject(" cn = billing , o=Acme")
    assert normalise_subject("CN=a\\,b,O=x") == (("CN", "a,b"), ("O", "x"))
    assert normalise_subject("CN=\\41b") == (("CN", "Ab"),)
    assert normalise_subject("CN=a+UID=7") == (("CN", "a"), ("UID", "7"))
    assert normalise_subject("CN=billing,O=Acme") != normalise_subject("O=Acme,CN=billing")
    for bad in ("", "billing", "=x"):
        with pytest.raises(ValueError):
            normalise_subject(bad)


def test_xfcc_in_envoys_format_quotes_what_needs_it(pki, tmp_path):
    odd = pki.ca.issue("odd", 'svc "a"; b', org="Acme, Inc", client=True, uris=["spiffe://x/y"])
    cert = ClientCertificate.from_x509(odd.certificate)
    xfcc = cert.xfcc().decode()
    parts = xfcc.split(";Cert=")
    assert parts[0] == f"Hash={cert.sha256}"
    assert "-----BEGIN%20CERTIFICATE-----%0A" in xfcc
    quoted = cert.subject.replace('"', '\\"')
    assert cert.subject.startswith("CN=svc ")
    assert xfcc.endswith(f';Subject="{quoted}";URI=spiffe://x/y')


# -- auth = ["mtls"] ---------------------------------------------------------------------------


class _Ctx:
    def __init__(self, cert: ClientCertificate | None = None, tls: bool = True) -> None:
        from avx_twisted.tls import TlsInfo

        self.tls = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", "", "", cert) if tls else None
        self.identity: Any = None
        self.client_ip = "127.0.0.1"
        self.request_id = b"rid"


def test_mtls_consumer_is_the_first_allowed_san_or_the_cn(pki):
    billing = ClientCertificate.from_x509(pki.billing.certificate)
    reports = ClientCertificate.from_x509(pki.reports.certificate)
    anyone = MtlsAuthenticator(MtlsPolicy())
    assert anyone.check(None, _Ctx(billing)).name == "spiffe://acme/ns/prod/sa/billing"
    assert anyone.check(None, _Ctx(reports)).name == "reports"
    by_dns = MtlsAuthenticator(MtlsPolicy(allowed_sans=("billing.acme.internal",)))
    identity = by_dns.check(None, _Ctx(billing))
    assert (identity.method, identity.name) == ("mtls", "billing.acme.internal")
    assert identity.claims["subject"] == "CN=billing,O=Acme"
    by_subject = MtlsAuthenticator(MtlsPolicy(allowed_subjects=("CN=billing,O=Acme",)))
    assert by_subject.check(None, _Ctx(billing)).name == "billing"
    with pytest.raises(AuthError) as caught:
        by_dns.check(None, _Ctx(reports))
    assert (caught.value.status, caught.value.reason) == (403, "certificate_not_allowed")
    for ctx in (_Ctx(None), _Ctx(tls=False)):
        with pytest.raises(AuthError) as caught:
            anyone.check(None, ctx)
        assert (caught.value.status, caught.value.reason) == (401, "no_certificate")


# -- the auth filter's asynchronous path ----------------------------------------------------------


class _Later:
    """An authenticator answering with a Deferred (as OAuth2 introspection does)."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls = 0

    def check(self, request: Any, ctx: Any, scopes: Any) -> Deferred[Identity]:
        self.calls += 1
        if isinstance(self.result, Exception):
            return fail(self.result)
        return succeed(self.result)


def _identity(name: str = "svc", **claims: Any) -> Identity:
    return Identity("oauth2", name, MappingProxyType(claims), frozenset())


def _result(d: Any) -> Any:
    found: list[Any] = []
    d.addBoth(found.append)
    assert found, "the Deferred has not fired"
    return found[0]


def test_an_asynchronous_authenticator_sets_the_identity():
    ctx = _Ctx()
    answer = _result(AuthFilter([_Later(_identity())], (), "r")(None, ctx))
    assert answer is None and ctx.identity.name == "svc"


def test_after_an_asynchronous_refusal_the_next_method_is_tried():
    ctx = _Ctx()
    refused = _Later(AuthError(401, "inactive", "the token is not active", "Bearer"))
    second = _Later(_identity("second"))
    assert _result(AuthFilter([refused, second], (), "r")(None, ctx)) is None
    assert ctx.identity.name == "second" and second.calls == 1


def test_an_unreachable_identity_provider_fails_closed_with_retry_after():
    ctx = _Ctx()
    down = _Later(
        AuthError(503, "idp_unavailable", "the identity provider is unavailable", None, 5)
    )
    missing = _Later(AuthError(401, "missing", "no credential", "Bearer"))
    answer = _result(AuthFilter([missing, down], (), "r")(None, ctx))
    assert answer.status == 503
    assert (b"Retry-After", b"5") in list(answer.fields)
    assert ctx.identity is None


def test_a_certificate_bound_token_needs_that_certificate(pki):
    billing = ClientCertificate.from_x509(pki.billing.certificate)
    reports = ClientCertificate.from_x509(pki.reports.certificate)
    bound = _identity(cnf={"x5t#S256": billing.x5t_s256})
    ctx = _Ctx(billing)
    assert _result(AuthFilter([_Later(bound)], (), "r")(None, ctx)) is None
    for other in (_Ctx(reports), _Ctx(None), _Ctx(tls=False)):
        answer = _result(AuthFilter([_Later(bound)], (), "r")(None, other))
        assert answer.status == 403
        assert other.identity is None


# -- the PROXY protocol wrapper -----------------------------------------------------------------


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.peer = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.peer = self.transport.getPeer()


class _Factory:
    def __init__(self) -> None:
        self.made: list[_Recorder] = []

    def buildProtocol(self, addr: Any) -> _Recorder:
        p = _Recorder()
        self.made.append(p)
        return p

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


def _proxied(data: bytes) -> tuple[_Recorder, StringTransport]:
    inner = _Factory()
    factory = ProxyProtocolFactory(inner)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    return inner.made[0], transport


def test_proxy_v1_header_gives_the_peer_and_passes_the_rest():
    app, transport = _proxied(
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\nGET / HTTP/1.1\r\n"
    )
    assert app.data == b"GET / HTTP/1.1\r\n"
    assert app.peer.host == "203.0.113.7"
    assert not transport.disconnecting


def test_proxy_header_with_a_source_that_is_not_an_address_closes_before_any_byte():
    app, transport = _proxied(b"PROXY TCP4 evil 198.51.100.1 40000 443\r\nGET / HTTP/1.1\r\n")
    assert app.data == b""
    assert transport.disconnecting or transport.disconnected


def test_no_proxy_header_closes():
    app, transport = _proxied(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert app.data == b""
    assert transport.disconnecting


def test_listener_factory_wraps_tls_inside_proxy(pki):
    tls = ServerTLS(listener_tls(pki), "tcp:8443")
    site = _Factory()
    plain = listener_factory(site, ListenerConfig("tcp:8443", http2=False), None)
    assert plain is site
    both = listener_factory(
        site, ListenerConfig("tcp:8443", proxy_protocol=True, http2=False), tls
    )
    assert isinstance(both, ProxyProtocolFactory)
    assert isinstance(both.wrappedFactory, TLSServerFactory)
    assert both.wrappedFactory.wrappedFactory is site


def test_proxy_v2_local_header_keeps_the_sockets_peer():
    local = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + b"\x00\x00"
    app, transport = _proxied(local + b"GET /health HTTP/1.1\r\n")
    assert app.data == b"GET /health HTTP/1.1\r\n"
    assert app.peer == transport.getPeer()
