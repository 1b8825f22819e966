"""Tests for TLS to upstreams in avx_twisted.client: the client certificate shown, SNI and the
verified name from ``server_name``, pool keys and settings, and session resumption. Real
pyOpenSSL handshakes joined in memory by ``twisted.test.iosim``; no sockets."""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path
from typing import Any, List, Optional

from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.defer import succeed
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avx_twisted.client import Connector, ResumingCreator, UpstreamClients, UpstreamTLS
from avx_twisted.config import ConfigError, UpstreamConfig
from avx_twisted.upstream import Target
from tests.support.pki import Authority, Issued


@implementer(IOpenSSLServerConnectionCreator)
class Upstream:
    """The server side of the handshakes: records SNI and the client certificates it verified
    (a resumed session verifies none)."""

    def __init__(
        self,
        server: Issued,
        client_ca: Optional[Path] = None,
        max_version: int = SSL.TLS1_3_VERSION,
    ) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_max_proto_version(max_version)
        ctx.use_certificate_chain_file(str(server.cert))
        ctx.use_privatekey_file(str(server.key))
        ctx.set_session_id(b"avx-test")
        ctx.set_tlsext_servername_callback(self._server_name)
        if client_ca is not None:
            ctx.load_verify_locations(str(client_ca))
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        self._ctx = ctx
        self.server_names: List[Optional[bytes]] = []
        self.verified_subjects: List[str] = []

    def _server_name(self, connection: SSL.Connection) -> None:
        self.server_names.append(connection.get_servername())

    def _verify(self, connection: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if depth == 0 and ok:
            name = cert.to_cryptography().subject
            self.verified_subjects.append(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        return bool(ok)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._ctx, None)
        connection.set_app_data(tlsProtocol)
        return connection


class Answer(Protocol):
    """The upstream's application: one "response" per request."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"response")


class Ask(Protocol):
    """The gateway's side: sends a "request", keeps what comes back and how it ended."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Any = None

    def connectionMade(self) -> None:
        self.transport.write(b"request")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


def exchange(creator: Any, upstream: Upstream) -> tuple[Ask, Any]:
    """One connection from ``creator`` to ``upstream``, pumped until quiet: (the client's
    application protocol, the pump)."""
    clock = Clock()  # TLS transports flush their small writes on the next tick
    ask = Ask()
    client_factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: ask), clock)
    server_factory = TLSMemoryBIOFactory(upstream, False, Factory.forProtocol(Answer), clock)
    _client, _server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    return ask, pump


def close(ask: Ask, pump: Any) -> None:
    """Close the connection cleanly (TLS close_notify both ways)."""
    ask.transport.loseConnection()
    pump.flush()


class CertificatesCase(SynchronousTestCase):
    """Each test's certificates: the upstreams' CA with a certificate for users.internal (no
    IP address) and one for 127.0.0.1 only; the gateway's client certificate from another CA."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="avx-client-tls-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = Authority(self.dir, "upstream CA")
        self.client_ca = Authority(self.dir, "client CA")
        self.users = self.ca.issue("users", "users.internal", dns=["users.internal"])
        self.ip_only = self.ca.issue("ip", "127.0.0.1", ips=["127.0.0.1"])
        self.gateway_cert = self.client_ca.issue("gateway", "gateway.internal", client=True)
        self.clients = UpstreamClients(MemoryReactorClock(), 1.0)

    def tls(self, client_cert: bool = True, server_name: str = "") -> UpstreamTLS:
        cert, key = self.gateway_cert.pair if client_cert else (None, None)
        return UpstreamTLS.load(str(self.ca.path), cert, key, server_name)

    def connector(self, tls: UpstreamTLS, url: str = "https://127.0.0.1:8443") -> Connector:
        return self.clients.connector(Target(url), tls)


class ClientCertificateTests(CertificatesCase):
    def test_the_client_certificate_is_shown_to_an_upstream_that_requires_one(self) -> None:
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        ask, _ = exchange(self.connector(self.tls()).sessions, upstream)
        self.assertEqual(ask.received, b"response")
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"])

    def test_without_a_client_certificate_the_upstream_refuses_the_handshake(self) -> None:
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        ask, _ = exchange(self.connector(self.tls(client_cert=False)).sessions, upstream)
        self.assertEqual(ask.received, b"")
        self.assertIsNotNone(ask.lost)
        self.assertIsInstance(ask.lost.value, SSL.Error)
        self.assertEqual(upstream.verified_subjects, [])

    def test_the_agents_show_the_client_certificate_too(self) -> None:
        # Health checks of an mTLS upstream go through the route's Agent.
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        creator = self.clients.policy(self.tls()).creatorForNetloc(b"127.0.0.1", 8443)
        ask, _ = exchange(creator, upstream)
        self.assertEqual(ask.received, b"response")
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"])


class ServerNameTests(CertificatesCase):
    def test_server_name_is_sent_as_sni_and_verified_for_an_ip_url(self) -> None:
        upstream = Upstream(self.users)
        tls = self.tls(server_name="users.internal")
        ask, _ = exchange(self.connector(tls).sessions, upstream)
        self.assertEqual(ask.received, b"response")
        self.assertEqual(upstream.server_names, [b"users.internal"])

    def test_a_certificate_without_server_name_fails_verification(self) -> None:
        upstream = Upstream(self.users)
        ask, _ = exchange(self.connector(self.tls(server_name="other.internal")).sessions, upstream)
        self.assertEqual(ask.received, b"")
        self.assertIsNotNone(ask.lost)

    def test_without_server_name_an_ip_url_is_verified_as_an_ip_and_sends_no_sni(self) -> None:
        ask, _ = exchange(self.connector(self.tls()).sessions, Upstream(self.users))
        self.assertEqual(ask.received, b"")  # users.internal's certificate has no IP SAN
        upstream = Upstream(self.ip_only)
        ask, _ = exchange(self.connector(self.tls()).sessions, upstream)
        self.assertEqual(ask.received, b"response")
        self.assertEqual(upstream.server_names, [None])

    def test_without_server_name_the_urls_host_is_sni_and_verified(self) -> None:
        upstream = Upstream(self.users)
        connector = self.connector(self.tls(), url="https://users.internal:8443")
        ask, _ = exchange(connector.sessions, upstream)
        self.assertEqual(ask.received, b"response")
        self.assertEqual(upstream.server_names, [b"users.internal"])

    def test_the_agents_use_server_name(self) -> None:
        upstream = Upstream(self.users)
        policy = self.clients.policy(self.tls(server_name="users.internal"))
        ask, _ = exchange(policy.creatorForNetloc(b"127.0.0.1", 8443), upstream)
        self.assertEqual(ask.received, b"response")
        self.assertEqual(upstream.server_names, [b"users.internal"])


class SessionTests(CertificatesCase):
    """A second connection to an upstream resumes the first one's session: the upstream
    verifies no client certificate the second time."""

    def resumes(self, version: int) -> None:
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path, max_version=version)
        creator = self.connector(self.tls()).sessions
        assert creator is not None
        ask, pump = exchange(creator, upstream)
        self.assertEqual(ask.received, b"response")
        creator.keep(ask.transport.getHandle())
        close(ask, pump)
        for _ in range(2):
            ask, pump = exchange(creator, upstream)
            self.assertEqual(ask.received, b"response")
            creator.keep(ask.transport.getHandle())
            close(ask, pump)
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"])

    def test_tls12_sessions_are_resumed(self) -> None:
        self.resumes(SSL.TLS1_2_VERSION)

    def test_tls13_sessions_are_resumed(self) -> None:
        self.resumes(SSL.TLS1_3_VERSION)

    def test_without_keep_every_connection_makes_a_full_handshake(self) -> None:
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        creator = self.connector(self.tls()).sessions
        for _ in range(2):
            ask, pump = exchange(creator, upstream)
            close(ask, pump)
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"] * 2)

    def test_a_session_whose_upstream_dropped_tcp_is_not_resumed_once_freed(self) -> None:
        # OpenSSL's rule: freeing a connection that saw no close_notify either way marks its
        # session not resumable, and pyOpenSSL cannot copy a session before that. (An abort
        # here still sends a close_notify: Twisted shuts TLS down first.)
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        creator = self.connector(self.tls()).sessions
        assert creator is not None
        ask, pump = exchange(creator, upstream)
        creator.keep(ask.transport.getHandle())
        pump.server.transport.abortConnection()  # the TCP connection, under TLS
        pump.flush()
        self.assertIsNotNone(ask.lost)
        del ask, pump
        gc.collect()
        ask, pump = exchange(creator, upstream)
        self.assertEqual(ask.received, b"response")
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"] * 2)

    def test_a_session_whose_connection_the_gateway_aborted_is_resumed(self) -> None:
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        creator = self.connector(self.tls()).sessions
        assert creator is not None
        ask, pump = exchange(creator, upstream)
        creator.keep(ask.transport.getHandle())
        ask.transport.abortConnection()
        pump.flush()
        del ask, pump
        gc.collect()
        ask, pump = exchange(creator, upstream)
        self.assertEqual(ask.received, b"response")
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"])

    def test_sessions_are_per_target(self) -> None:
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        first = self.connector(self.tls()).sessions
        assert first is not None
        ask, pump = exchange(first, upstream)
        first.keep(ask.transport.getHandle())
        close(ask, pump)
        other = self.connector(self.tls(), url="https://127.0.0.1:9443").sessions
        exchange(other, upstream)
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"] * 2)

    def test_connectors_of_one_pool_key_share_their_sessions(self) -> None:
        # Two routes to one target with the same TLS settings: one pool key, one session.
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        first, second = self.connector(self.tls()), self.connector(self.tls())
        self.assertIs(first.sessions, second.sessions)
        assert first.sessions is not None
        ask, pump = exchange(first.sessions, upstream)
        first.sessions.keep(ask.transport.getHandle())
        close(ask, pump)
        exchange(second.sessions, upstream)
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"])

    def test_keep_ignores_a_connection_before_its_handshake_and_others_connections(self) -> None:
        creator = self.connector(self.tls()).sessions
        assert creator is not None
        factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Ask), Clock())
        factory.buildProtocol(None).makeConnection(StringTransport())  # no answer
        (unstarted,) = creator.pending
        creator.keep(unstarted)
        self.assertIn(unstarted, creator.pending)
        foreign = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        creator.keep(foreign)  # not ours: ignored, no error
        self.assertIsNone(creator._session)

    def test_a_response_keeps_its_connections_session_then_responses_are_not_watched(
        self,
    ) -> None:
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        connector = self.connector(self.tls())
        creator = connector.sessions
        assert creator is not None
        ask, pump = exchange(creator, upstream)
        handle = ask.transport.getHandle()
        response = FakeResponse(ask.transport)
        connector.pool = FakePool(response)  # type: ignore[assignment]
        got = self.successResultOf(connector.request(b"GET / HTTP/1.1\r\n\r\n", b"GET"))
        self.assertIs(got, response)
        self.assertEqual(response.looked, 1)
        self.assertNotIn(handle, creator.pending)
        self.assertFalse(creator.watching)
        self.successResultOf(connector.request(b"GET / HTTP/1.1\r\n\r\n", b"GET"))
        self.assertEqual(response.looked, 1)  # nothing to take: the response is not looked at
        close(ask, pump)
        exchange(creator, upstream)
        self.assertEqual(upstream.verified_subjects, ["gateway.internal"])

    def test_a_request_that_opens_a_connection_watches_its_response(self) -> None:
        reactor = MemoryReactorClock()
        clients = UpstreamClients(reactor, 1.0)
        connector = clients.connector(Target("https://127.0.0.1:8443"), self.tls())
        creator = connector.sessions
        assert creator is not None
        self.assertFalse(creator.watching)
        d = connector.request(b"GET / HTTP/1.1\r\n\r\n", b"GET")
        self.assertEqual(creator.connecting, 1)  # at once, before the TCP connection is up
        self.assertTrue(creator.watching)
        host, port, factory, _timeout, _bind = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 8443))
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        self.failureResultOf(d, error.ConnectionRefusedError)
        self.assertEqual(creator.connecting, 0)
        self.assertFalse(creator.watching)


class FakeResponse:
    """An UpstreamResponse whose connection is ``transport``; counts who looked at it."""

    def __init__(self, transport: Any) -> None:
        self.protocol = self
        self._transport = transport
        self.looked = 0

    @property
    def transport(self) -> Any:
        self.looked += 1
        return self._transport


class FakePool:
    def __init__(self, response: Any) -> None:
        self.response = response

    def request(self, *args: Any) -> Any:
        return succeed(self.response)


class SettingsTests(CertificatesCase):
    def test_interfaces(self) -> None:
        creator = self.connector(self.tls()).sessions
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, creator))
        self.assertTrue(verifyObject(IPolicyForHTTPS, self.clients.policy(self.tls())))
        self.assertIsInstance(creator, ResumingCreator)

    def test_pool_key_carries_every_tls_setting(self) -> None:
        keys = {
            self.connector(self.tls()).key,
            self.connector(self.tls(client_cert=False)).key,
            self.connector(self.tls(server_name="users.internal")).key,
            self.connector(UpstreamTLS()).key,
        }
        self.assertEqual(len(keys), 4)
        self.assertEqual(self.connector(self.tls()).key, self.connector(self.tls()).key)

    def test_http_targets_pool_without_tls_settings(self) -> None:
        plain = self.connector(self.tls(), url="http://127.0.0.1:8080")
        self.assertEqual(plain.key, (b"http", b"127.0.0.1", 8080, None))
        self.assertIsNone(plain.sessions)

    def test_a_certificate_rewritten_at_the_same_path_is_another_setting(self) -> None:
        before = self.tls()
        self.assertEqual(before, self.tls())
        self.client_ca.issue("gateway", "gateway-2.internal", client=True)
        after = self.tls()
        self.assertNotEqual(before, after)
        self.assertEqual(after.client_cert_file, before.client_cert_file)
        upstream = Upstream(self.ip_only, client_ca=self.client_ca.path)
        exchange(self.connector(after).sessions, upstream)
        self.assertEqual(upstream.verified_subjects, ["gateway-2.internal"])

    def test_the_settings_repr_shows_no_key_material(self) -> None:
        text = repr(self.tls())
        self.assertIn("gateway.pem", text)
        self.assertNotIn("PRIVATE", text)
        self.assertNotIn("EllipticCurvePrivateKey", text)

    def test_of_upstream_reads_the_routes_settings(self) -> None:
        cert, key = self.gateway_cert.pair
        up = UpstreamConfig(
            urls=("https://127.0.0.1:8443",),
            ca_file=str(self.ca.path),
            client_cert_file=cert,
            client_key_file=key,
            server_name="users.internal",
        )
        self.assertEqual(
            UpstreamTLS.of_upstream(up, "users"), self.tls(server_name="users.internal")
        )

    def test_a_file_gone_since_the_check_is_a_config_error_naming_route_and_key(self) -> None:
        cert, key = self.gateway_cert.pair
        up = UpstreamConfig(
            urls=("https://127.0.0.1:8443",), client_cert_file=cert, client_key_file=key
        )
        self.gateway_cert.key.unlink()
        e = self.assertRaises(ConfigError, UpstreamTLS.of_upstream, up, "users")
        self.assertEqual(len(e.errors), 1)
        self.assertIn("route 'users': upstream.client_key_file:", e.errors[0])
        self.assertIn(key, e.errors[0])

    def test_every_ca_of_a_bundle_is_trusted(self) -> None:
        other = Authority(self.dir, "other CA")
        bundle = self.dir / "bundle.pem"
        bundle.write_bytes(other.path.read_bytes() + self.ca.path.read_bytes())
        tls = UpstreamTLS.load(str(bundle))
        ask, _ = exchange(self.connector(tls).sessions, Upstream(self.ip_only))
        self.assertEqual(ask.received, b"response")

    def test_an_agent_per_tls_setting_with_its_own_pool(self) -> None:
        clients = self.clients
        self.assertIs(clients.agent(), clients.agent(None))
        self.assertIs(clients.agent(UpstreamTLS())._pool, clients.background_pool)
        mtls = clients.agent(self.tls())
        self.assertIs(mtls, clients.agent(self.tls()))
        self.assertIsNot(mtls._pool, clients.background_pool)
        self.assertIsNot(clients.agent(self.tls(client_cert=False))._pool, mtls._pool)
        self.assertIsNot(clients.agent(str(self.ca.path))._pool, clients.background_pool)

    def test_close_closes_the_pools_of_every_agent(self) -> None:
        closed: List[str] = []
        mtls = self.clients.agent(self.tls())
        for name, pool in (("default", self.clients.background_pool), ("mtls", mtls._pool)):
            pool.closeCachedConnections = lambda name=name: closed.append(name) or succeed(None)
        self.successResultOf(self.clients.close())
        self.assertEqual(sorted(closed), ["default", "mtls"])

    def test_the_agents_reuse_one_creator_per_host_for_a_bounded_number_of_hosts(self) -> None:
        policy = self.clients.policy(self.tls())
        first = policy.creatorForNetloc(b"a.internal", 443)
        self.assertIs(policy.creatorForNetloc(b"a.internal", 443), first)
        self.assertIsNot(policy.creatorForNetloc(b"a.internal", 8443), first)
        for i in range(policy.max_hosts):
            policy.creatorForNetloc(b"h%d.internal" % i, 443)
        self.assertIsNot(policy.creatorForNetloc(b"a.internal", 443), first)
        self.assertLessEqual(len(policy._creators), policy.max_hosts)
