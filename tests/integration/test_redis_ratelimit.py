"""Rate limits shared by gateway replicas through a real redis-server."""

from __future__ import annotations

import pytest
import pytest_twisted
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from avx_twisted.config import ConfigError
from avx_twisted.ratelimit import BackendUnavailable
from avx_twisted.redis_store import RedisStore, tls_client_creator
from avx_twisted.urls import parse_redis_url
from tests.support.redis import RedisServer
from tests.support.servers import FnResource, gateway, http, upstream
from tests.support.tls import make_ca_and_server

ensure = pytest_twisted.ensureDeferred


def config(up_url: str, redis_url: str, on_error: str = "allow", burst: int = 5) -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "routes": [{"name": "api", "path": "/*", "upstream": {"urls": [up_url]}}],
        "middleware": {"enable_rate_limiting": True, "enable_logging": False},
        "rate_limiting": {
            "requests_per_second": 0.01,
            "burst_size": burst,
            "key": "route",
            "backend": "redis",
            "redis_url": redis_url,
            "on_backend_error": on_error,
        },
    }


async def code(gw) -> int:
    response = await http("GET", f"http://127.0.0.1:{gw.port}/x")
    await response.content()
    return response.code


@ensure
async def test_two_gateways_share_one_limit_to_the_token(tmp_path, closer):
    redis = RedisServer(tmp_path).start()
    closer.add(type("R", (), {"stop": redis.stop})())
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    one = closer.add(gateway(config(up.url, redis.url)))
    two = closer.add(gateway(config(up.url, redis.url)))
    codes = []
    for i in range(12):
        codes.append(await code(one if i % 2 == 0 else two))
    assert codes.count(200) == 5  # the burst, exactly, across both replicas
    assert codes[5:] == [429] * 7
    assert len(seen.seen) == 5


@ensure
async def test_redis_down_with_allow_falls_back_to_local_buckets(tmp_path, closer):
    redis = RedisServer(tmp_path).start()
    url = redis.url
    redis.stop()
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(config(up.url, url, on_error="allow", burst=2)))
    codes = [await code(gw) for _ in range(3)]
    assert codes == [200, 200, 429]  # the local bucket still limits
    store = gw.runtime.rate_store
    assert store.errors >= 3
    metrics = gw.metrics.rate_limit_backend_errors._value.get()
    assert metrics >= 3


@ensure
async def test_redis_down_with_deny_answers_503(tmp_path, closer):
    redis = RedisServer(tmp_path).start()
    url = redis.url
    redis.stop()
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gw = closer.add(gateway(config(up.url, url, on_error="deny")))
    response = await http("GET", f"http://127.0.0.1:{gw.port}/x")
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    await response.content()
    assert seen.seen == []


@ensure
async def test_gateway_reconnects_when_redis_comes_back(tmp_path, closer):
    redis = RedisServer(tmp_path).start()
    port = redis.port
    up = closer.add(upstream(FnResource(lambda r: b"ok")))
    gw = closer.add(gateway(config(up.url, redis.url, burst=3)))
    assert await code(gw) == 200
    redis.stop()
    assert await code(gw) == 200  # fallback bucket
    redis = RedisServer(tmp_path, port=port).start()
    closer.add(type("R", (), {"stop": redis.stop})())
    store = gw.runtime.rate_store
    errors = store.errors
    for _ in range(100):  # txredisapi reconnects with back-off
        await code(gw)
        if store.errors == errors:
            break
        errors = store.errors
        await deferLater(reactor, 0.2, lambda: None)
    before = store.errors
    assert await code(gw) in (200, 429)
    assert store.errors == before  # answered by Redis again


@ensure
async def test_two_real_twistd_processes_hold_one_shared_limit(tmp_path, closer):
    import textwrap

    import treq
    from twisted.web.client import HTTPConnectionPool

    from tests.support.process import GatewayProcess, free_port

    redis = RedisServer(tmp_path).start()
    closer.add(type("R", (), {"stop": redis.stop})())
    seen = FnResource(lambda r: b"ok")
    up = closer.add(upstream(seen))
    gateways = []
    try:
        for n in range(2):
            port = free_port()
            path = tmp_path / f"gw{n}.toml"
            path.write_text(
                textwrap.dedent(f"""
                [server]
                host = "127.0.0.1"
                port = {port}
                [[routes]]
                name = "api"
                path = "/*"
                [routes.upstream]
                urls = ["{up.url}"]
                [middleware]
                enable_rate_limiting = true
                enable_logging = false
                [rate_limiting]
                requests_per_second = 0.01
                burst_size = 7
                key = "route"
                backend = "redis"
                redis_url = "{redis.url}"
            """)
            )
            gateways.append(await GatewayProcess(path, port).start())
        codes = []
        for i in range(20):
            gw = gateways[i % 2]
            response = await treq.get(gw.url("/x"), pool=HTTPConnectionPool(reactor, False))
            await response.content()
            codes.append(response.code)
        assert codes.count(200) == 7 and codes.count(429) == 13
        assert len(seen.seen) == 7
    finally:
        for gw in gateways:
            assert await gw.stop() == 0


# The URL forms, each against a real redis-server driven through RedisStore.take.


def start(closer, tmp_path, **options) -> RedisServer:
    return closer.add(RedisServer(tmp_path, **options).start())


def store(closer, url: str) -> RedisStore:
    """A store that fails (BackendUnavailable) when Redis does not answer."""
    s = RedisStore(url, reactor, on_backend_error="deny", timeout_s=1.0)
    closer.add(type("S", (), {"stop": s.close})())
    return s


async def take(s: RedisStore, key: str = "k") -> bool:
    """True when Redis answered (the burst is 5, so the first take is allowed)."""
    try:
        decision = await s.take(key, 0.01, 5)
    except BackendUnavailable:
        return False
    assert decision.allowed and decision.remaining == 4
    return True


@ensure
async def test_password_url_logs_in_and_selects_the_db(tmp_path, closer):
    redis = start(closer, tmp_path, password="p@ss:w/rd")
    s = store(closer, f"redis://:p%40ss%3Aw%2Frd@127.0.0.1:{redis.port}/3")
    assert await take(s, "pw")
    assert redis.call("EXISTS", "avx:rl:pw", db=3) == b":1\r\n"
    assert redis.call("EXISTS", "avx:rl:pw", db=0) == b":0\r\n"
    assert s.errors == 0


@ensure
async def test_wrong_or_missing_password_is_a_backend_error(tmp_path, closer):
    redis = start(closer, tmp_path, password="right")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for url in [f"redis://:wrong-pw@127.0.0.1:{redis.port}/0", redis.url]:
            s = store(closer, url)
            assert not await take(s)
            assert s.errors == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = [formatEvent(e) for e in events]
    assert any(
        f"Redis redis://:***@127.0.0.1:{redis.port}/0) unavailable" in line for line in logged
    ), logged
    assert not any("wrong-pw" in line for line in logged)


@ensure
async def test_acl_user_logs_in_with_its_name(tmp_path, closer):
    redis = start(
        closer,
        tmp_path,
        args=[
            "--user",
            "default",
            "off",
            "--user",
            "gw",
            "on",
            ">gw-pw",
            "~avx:rl:*",
            "+@all",
        ],
    )
    s = store(closer, f"redis://gw:gw-pw@127.0.0.1:{redis.port}/0")
    assert await take(s)
    assert redis.call("EXISTS", "avx:rl:k", user="gw", password="gw-pw") == b":1\r\n"
    # the same password without the user name is the (disabled) default user's
    for url in [
        f"redis://:gw-pw@127.0.0.1:{redis.port}/0",
        f"redis://gw:wrong@127.0.0.1:{redis.port}/0",
    ]:
        refused = store(closer, url)
        assert not await take(refused)
        assert refused.errors == 1


@ensure
async def test_unix_socket_url(tmp_path, closer):
    redis = start(closer, tmp_path, unix_socket=True, password="sock-pw")
    assert redis.socket_path is not None and redis.socket_path.startswith("/tmp/")
    s = store(closer, f"unix://:sock-pw@{redis.socket_path}?db=2")
    assert await take(s)
    assert redis.call("EXISTS", "avx:rl:k", db=2) == b":1\r\n"
    assert s.errors == 0


def tls_server(closer, tmp_path, **options) -> tuple[RedisServer, dict]:
    certs = make_ca_and_server(tmp_path)  # server certificate for localhost and 127.0.0.1
    return start(closer, tmp_path, tls=certs, **options), certs


@ensure
async def test_rediss_verified_against_ssl_ca_certs(tmp_path, closer):
    redis, certs = tls_server(closer, tmp_path, password="tls-pw")
    for host in ["127.0.0.1", "localhost"]:
        s = store(closer, f"rediss://:tls-pw@{host}:{redis.port}/1?ssl_ca_certs={certs['ca']}")
        assert await take(s, host)
        assert s.errors == 0
    assert redis.call("EXISTS", "avx:rl:localhost", db=1) == b":1\r\n"


@ensure
async def test_rediss_refuses_a_server_whose_ca_is_not_trusted(tmp_path, closer):
    redis, certs = tls_server(closer, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_ca = make_ca_and_server(other)["ca"]
    for url in [
        f"rediss://127.0.0.1:{redis.port}/0?ssl_ca_certs={other_ca}",
        f"rediss://127.0.0.1:{redis.port}/0",
    ]:  # the system trust store
        s = store(closer, url)
        assert not await take(s)
        assert s.errors == 1
        reason = await tls_handshake(url)
        assert isinstance(reason, Failure) and reason.check(SSL.Error), reason
        assert "certificate verify failed" in str(reason.value)
    # the control: the same server, its own CA trusted
    trusted = f"rediss://127.0.0.1:{redis.port}?ssl_ca_certs={certs['ca']}"
    assert await tls_handshake(trusted) == b"+PONG\r\n"


@ensure
async def test_rediss_refuses_a_certificate_for_another_host(tmp_path, closer):
    redis, certs = tls_server(closer, tmp_path, bind=["127.0.0.1", "127.0.0.2"])
    url = f"rediss://127.0.0.2:{redis.port}/0?ssl_ca_certs={certs['ca']}"  # cert: 127.0.0.1
    s = store(closer, url)
    assert not await take(s)
    assert s.errors == 1
    reason = await tls_handshake(url)
    assert isinstance(reason, Failure) and reason.check(VerificationError), reason


@ensure
async def test_rediss_with_ssl_cert_reqs_none_takes_any_certificate(tmp_path, closer):
    redis, certs = tls_server(closer, tmp_path)
    s = store(closer, f"rediss://localhost:{redis.port}/0?ssl_cert_reqs=none")
    assert await take(s)
    assert s.errors == 0


def test_rediss_with_a_ca_file_that_does_not_load_is_a_config_error(tmp_path):
    (tmp_path / "empty.pem").write_text("")
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----")
    for name, why in [
        ("missing.pem", "cannot be read: No such file or directory"),
        ("empty.pem", "holds no PEM certificate"),
        ("bad.pem", "holds a certificate that does not load"),
    ]:
        path = tmp_path / name
        with pytest.raises(ConfigError) as caught:
            RedisStore(f"rediss://127.0.0.1:1/0?ssl_ca_certs={path}", reactor)
        assert caught.value.errors == [f"rate_limiting.redis_url: ssl_ca_certs {str(path)!r} {why}"]


async def tls_handshake(url: str) -> bytes | Failure:
    """A PING over ``tls_client_creator(url)``: the reply, or why the connection ended without."""
    parsed = parse_redis_url(url)
    assert parsed.host is not None
    done: Deferred[list[bytes | Failure]] = Deferred()  # a Failure as a result would errback

    class Ping(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"PING\r\n")

        def dataReceived(self, data: bytes) -> None:
            if not done.called:
                done.callback([data])
            self.transport.loseConnection()

        def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
            if not done.called:
                done.callback([reason])

    endpoint = wrapClientTLS(
        tls_client_creator(parsed), TCP4ClientEndpoint(reactor, parsed.host, parsed.port)
    )
    try:
        await connectProtocol(endpoint, Ping())
    except Exception:  # a failed handshake may fail the connection attempt itself
        return Failure()
    return (await done)[0]
