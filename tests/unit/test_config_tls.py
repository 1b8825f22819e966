"""Tests for the config of issue 13: structured listeners with TLS (``[[server.listeners]]``),
``[auth.mtls]`` and routes' ``mtls`` lists, ``[auth.oauth2]``, ``auth.jwt.oidc_issuer``, client
certificates to upstreams and ``rate_limiting.key = "consumer"``: what each key becomes and the
error line of each way it can be wrong. Certificates are minted per test; nothing listens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted._configmodel import (
    ListenerConfig,
    ListenerTlsConfig,
    MtlsConfig,
    MtlsPolicy,
    OAuth2Config,
    TlsCertificate,
)
from avx_twisted.config import ConfigError, GatewayConfig
from tests.support.pki import Authority, Issued
from tests.unit.test_config import UPSTREAM_URL, config, route, set_env

HTTPS_URL = "https://users.internal:8443"
INTROSPECTION = "https://idp.example.com/oauth2/introspect"
NO_FILE = "No such file or directory"


# --- helpers ----------------------------------------------------------------------------------


class ConfigTestCase(SynchronousTestCase):
    """Helpers to load a config mapping and to assert on its errors, and a fresh directory of
    certificates: ``server`` (localhost), ``api`` (api.example.test), a ``client`` one, the CA's
    bundle, and files that are wrong in each way the parser tells apart."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="avx-config-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = Authority(Path(self.dir), "avx config CA")
        self.server = self.ca.issue("server", "localhost", dns=["localhost"])
        self.api = self.ca.issue("api", "api.example.test", dns=["api.example.test"])
        self.client = self.ca.issue("client", "gateway", client=True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes) -> str:
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def combined(self, issued: Issued) -> str:
        """One file holding the certificate and then its key."""
        return self.write(
            f"{issued.cert.stem}-combined.pem",
            issued.cert.read_bytes() + b"\n" + issued.key.read_bytes(),
        )

    def encrypted_key(self, issued: Issued) -> str:
        """The key of ``issued``, encrypted with a passphrase."""
        key = serialization.load_pem_private_key(issued.key.read_bytes(), password=None)
        return self.write(
            f"{issued.key.stem}-encrypted.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
        )

    def not_pem(self) -> str:
        return self.write("not-pem.txt", b"this is not a PEM file\n")

    def load(self, data: dict[str, Any], base_dir: str | None = None) -> GatewayConfig:
        return GatewayConfig.from_dict(data, base_dir=base_dir)

    def errors(self, data: dict[str, Any], base_dir: str | None = None) -> list[str]:
        """The error lines of an invalid config."""
        e = self.assertRaises(ConfigError, GatewayConfig.from_dict, data, base_dir=base_dir)
        return e.errors

    def assertError(self, data: dict[str, Any], expected: str) -> None:
        """``data`` is invalid with exactly one error, the line ``expected``."""
        self.assertEqual(self.errors(data), [expected])

    def assertErrorStartsWith(self, data: dict[str, Any], prefix: str) -> None:
        """``data`` is invalid with exactly one error, which starts with ``prefix``."""
        errors = self.errors(data)
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0].startswith(prefix), errors[0])

    # -- configs ---------------------------------------------------------------------------------

    def tls(self, **keys: Any) -> dict[str, Any]:
        """A ``[server.listeners.tls]`` table with the server certificate, plus ``keys``."""
        return {"cert_file": str(self.server.cert), "key_file": str(self.server.key), **keys}

    def sni(self, name: str, issued: Issued | None = None, **keys: Any) -> dict[str, Any]:
        """One entry of ``certificates``."""
        issued = issued or self.api
        return {
            "server_name": name,
            "cert_file": str(issued.cert),
            "key_file": str(issued.key),
            **keys,
        }

    def listeners(self, *entries: dict[str, Any], **server: Any) -> dict[str, Any]:
        """A config whose [server] has these ``[[server.listeners]]``."""
        return config(server={"listeners": list(entries), **server})

    def tls_listener(self, **tls: Any) -> dict[str, Any]:
        """A config with one TLS listener whose tls table is :meth:`tls` with ``tls``."""
        return self.listeners({"endpoint": "tcp:8443", "tls": self.tls(**tls)})

    def loaded_tls(self, **tls: Any) -> ListenerTlsConfig:
        found = self.load(self.tls_listener(**tls)).server.listeners[0].tls
        assert found is not None
        return found


# --- [[server.listeners]] -----------------------------------------------------------------------


class ListenerTests(ConfigTestCase):
    """Structured listeners: an endpoint string each, beside or instead of listen/host/port."""

    def test_a_listener_with_its_defaults(self) -> None:
        c = self.load(self.listeners({"endpoint": "tcp:8443"}))
        self.assertEqual(c.server.listeners, (ListenerConfig("tcp:8443"),))
        listener = c.server.listeners[0]
        self.assertIsNone(listener.tls)
        self.assertFalse(listener.proxy_protocol)
        self.assertTrue(listener.http2)  # the contract: on by default

    def test_listeners_replace_host_and_port(self) -> None:
        c = self.load(self.listeners({"endpoint": "tcp:8443"}, host="10.0.0.1", port=9000))
        self.assertEqual(c.server.endpoints, ())
        self.assertEqual(c.listeners(), [("listeners[0]", "tcp:8443")])

    def test_listeners_open_beside_listen(self) -> None:
        c = self.load(self.listeners({"endpoint": "tcp:8443"}, listen=["tcp:8080"]))
        self.assertEqual(c.server.endpoints, ("tcp:8080",))
        self.assertEqual(c.listeners(), [("data", "tcp:8080"), ("listeners[0]", "tcp:8443")])

    def test_no_listeners_keeps_host_and_port(self) -> None:
        c = self.load(self.listeners(host="127.0.0.1", port=9000))
        self.assertEqual(c.server.listeners, ())
        self.assertEqual(c.server.endpoints, ("tcp:9000:interface=127.0.0.1",))

    def test_purposes_in_order_with_the_other_listeners(self) -> None:
        data = self.listeners({"endpoint": "tcp:8443"}, {"endpoint": "unix:/tmp/avx-tls.sock"})
        data["metrics"] = {"listen": "tcp:9090:interface=127.0.0.1"}
        data["health"] = {"listen": "tcp:8081"}
        c = self.load(data)
        self.assertEqual(
            c.listeners(),
            [
                ("listeners[0]", "tcp:8443"),
                ("listeners[1]", "unix:/tmp/avx-tls.sock"),
                ("metrics", "tcp:9090:interface=127.0.0.1"),
                ("health", "tcp:8081"),
            ],
        )

    def test_listener_key_and_listener_config(self) -> None:
        c = self.load(
            self.listeners(
                {"endpoint": "tcp:8443"},
                {"endpoint": "tcp:8444", "proxy_protocol": True},
                listen=["tcp:8080"],
            )
        )
        self.assertEqual(c.listener_key("listeners[1]"), "server.listeners[1].endpoint")
        self.assertEqual(c.listener_key("data"), "server.listen")
        self.assertEqual(
            c.listener_config("listeners[1]"), ListenerConfig("tcp:8444", proxy_protocol=True)
        )
        self.assertIsNone(c.listener_config("data"))
        self.assertIsNone(c.listener_config("metrics"))

    def test_proxy_protocol(self) -> None:
        c = self.load(self.listeners({"endpoint": "tcp:8443", "proxy_protocol": True}))
        self.assertTrue(c.server.listeners[0].proxy_protocol)

    def test_toml_tables(self) -> None:
        c = GatewayConfig.from_toml(
            f"""
[[server.listeners]]
endpoint = "tcp:8443:interface=127.0.0.1"
proxy_protocol = true

[server.listeners.tls]
cert_file = "{self.server.cert}"
key_file = "{self.server.key}"

[[server.listeners.tls.certificates]]
server_name = "api.example.test"
cert_file = "{self.api.cert}"
key_file = "{self.api.key}"

[[server.listeners]]
endpoint = "tcp:8080"

[[routes]]
path = "/api/*"
upstream = {{ urls = ["{UPSTREAM_URL}"] }}
"""
        )
        first, second = c.server.listeners
        self.assertEqual(first.endpoint, "tcp:8443:interface=127.0.0.1")
        self.assertTrue(first.proxy_protocol)
        assert first.tls is not None
        self.assertEqual(first.tls.cert_file, str(self.server.cert))
        self.assertEqual(
            first.tls.certificates,
            (TlsCertificate(str(self.api.cert), str(self.api.key), "api.example.test"),),
        )
        self.assertEqual(second, ListenerConfig("tcp:8080"))

    def test_http2_false_is_accepted(self) -> None:
        c = self.load(self.listeners({"endpoint": "tcp:8443", "http2": False}))
        self.assertFalse(c.server.listeners[0].http2)

    def test_http2_true_is_accepted(self) -> None:
        c = self.load(self.listeners({"endpoint": "tcp:8443", "http2": True}))
        self.assertTrue(c.server.listeners[0].http2)

    def test_http2_limits(self) -> None:
        c = self.load(
            config(server={"http2": {"max_concurrent_streams": 10, "idle_timeout_ms": 5000}})
        )
        self.assertEqual(c.server.http2.max_concurrent_streams, 10)
        self.assertEqual(c.server.http2.idle_timeout_ms, 5000)
        self.assertEqual(c.server.http2.max_header_list_bytes, 65536)
        self.assertError(
            config(server={"http2": {"max_header_list_bytes": 10}}),
            "server.http2.max_header_list_bytes: 10 must be at least 1024",
        )

    def test_http2_must_be_a_boolean(self) -> None:
        self.assertError(
            self.listeners({"endpoint": "tcp:8443", "http2": "yes"}),
            "server.listeners[0].http2: 'yes' is not true or false",
        )

    def test_ssl_endpoint_is_refused(self) -> None:
        endpoint = f"ssl:8443:privateKey={self.server.key}:certKey={self.server.cert}"
        self.assertError(
            self.listeners({"endpoint": endpoint}),
            f"server.listeners[0].endpoint: {endpoint!r} is an ssl: endpoint; use tcp:, unix: "
            "or systemd: with [server.listeners.tls]",
        )

    def test_haproxy_endpoint_is_refused(self) -> None:
        self.assertError(
            self.listeners({"endpoint": "haproxy:tcp:8443"}),
            "server.listeners[0].endpoint: 'haproxy:tcp:8443' is an haproxy: endpoint; use "
            "tcp:, unix: or systemd: with proxy_protocol = true",
        )

    def test_endpoint_kinds_are_refused_in_any_case(self) -> None:
        # Twisted finds endpoint plugins (haproxy:) whatever the case of their prefix.
        errors = self.errors(
            self.listeners({"endpoint": "HAProxy:tcp:8443"}, {"endpoint": "SSL:8444"})
        )
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("'HAProxy:tcp:8443' is an haproxy: endpoint", errors[0])
        self.assertIn("'SSL:8444' is an ssl: endpoint", errors[1])

    def test_ssl_stays_allowed_in_listen(self) -> None:
        endpoint = f"ssl:8443:privateKey={self.server.key}:certKey={self.server.cert}"
        c = self.load(config(server={"listen": [endpoint]}))
        self.assertEqual(c.server.endpoints, (endpoint,))

    def test_endpoint_is_required(self) -> None:
        self.assertError(
            self.listeners({"proxy_protocol": True}),
            "server.listeners[0].endpoint: is required (a Twisted endpoint string)",
        )

    def test_invalid_endpoint(self) -> None:
        self.assertError(
            self.listeners({"endpoint": "tcp:notaport"}),
            "server.listeners[0].endpoint: 'tcp:notaport' is not a valid Twisted endpoint "
            "string: invalid literal for int() with base 10: 'notaport'",
        )

    def test_systemd_endpoint(self) -> None:
        c = self.load(self.listeners({"endpoint": "systemd:domain=INET:index=0"}))
        self.assertEqual(c.server.listeners[0].endpoint, "systemd:domain=INET:index=0")

    def test_listeners_must_be_an_array_of_tables(self) -> None:
        self.assertError(
            config(server={"listeners": {"endpoint": "tcp:8443"}}),
            "server.listeners: must be an array of tables ([[server.listeners]])",
        )

    def test_a_listener_must_be_a_table(self) -> None:
        self.assertError(
            self.listeners("tcp:8443"),  # type: ignore[arg-type]
            "server.listeners[0]: must be a table, not 'tcp:8443'",
        )

    def test_unknown_key(self) -> None:
        self.assertError(
            self.listeners({"endpoint": "tcp:8443", "proxy_protcol": True}),
            "server.listeners[0].proxy_protcol: unknown key; did you mean 'proxy_protocol'? "
            "(known keys: endpoint, http2, proxy_protocol, tls)",
        )

    def test_a_listener_may_not_share_the_port_of_listen(self) -> None:
        self.assertError(
            self.listeners({"endpoint": "tcp:18080"}, listen=["tcp:18080"]),
            "server.listeners[0].endpoint: 'tcp:18080': port 18080 is already used by "
            "server.listen",
        )

    def test_two_listeners_may_not_share_a_port(self) -> None:
        self.assertError(
            self.listeners({"endpoint": "tcp:18443"}, {"endpoint": "tcp:18443"}),
            "server.listeners[1].endpoint: 'tcp:18443': port 18443 is already used by "
            "server.listeners[0].endpoint",
        )

    def test_workers_need_tcp_listeners(self) -> None:
        self.assertErrorStartsWith(
            self.listeners({"endpoint": "unix:/tmp/avx-tls.sock"}, workers=2),
            "server.listeners[0].endpoint: 'unix:/tmp/avx-tls.sock' cannot be shared by 2 "
            "worker processes",
        )


# --- [server.listeners.tls] ---------------------------------------------------------------------


class ListenerTlsTests(ConfigTestCase):
    """The TLS of a listener: every file is read and checked when the config loads."""

    def test_certificate_and_key_with_the_defaults(self) -> None:
        self.assertEqual(
            self.loaded_tls(),
            ListenerTlsConfig(cert_file=str(self.server.cert), key_file=str(self.server.key)),
        )
        tls = self.loaded_tls()
        self.assertEqual(tls.min_version, "TLSv1.2")
        self.assertEqual(tls.client_auth, "none")
        self.assertIsNone(tls.client_ca_file)
        self.assertEqual(tls.certificates, ())
        self.assertEqual(tls.default, TlsCertificate(str(self.server.cert), str(self.server.key)))

    def test_reload_interval(self) -> None:
        self.assertEqual(self.loaded_tls().reload_interval_s, 0)
        self.assertEqual(self.loaded_tls(reload_interval_s=60).reload_interval_s, 60)
        data = self.listeners(
            {
                "endpoint": "tcp:8443",
                "tls": {
                    "cert_file": str(self.server.cert),
                    "key_file": str(self.server.key),
                    "reload_interval_s": -1,
                },
            }
        )
        self.assertError(data, "server.listeners[0].tls.reload_interval_s: -1 must be at least 0")

    def test_certificate_and_key_in_one_file(self) -> None:
        both = self.combined(self.server)
        tls = self.loaded_tls(cert_file=both, key_file=both)
        self.assertEqual((tls.cert_file, tls.key_file), (both, both))

    def test_relative_files_are_found_in_the_config_directory(self) -> None:
        data = self.listeners(
            {"endpoint": "tcp:8443", "tls": {"cert_file": "server.pem", "key_file": "server.key"}}
        )
        tls = self.load(data, base_dir=self.dir).server.listeners[0].tls
        assert tls is not None
        self.assertEqual(tls.cert_file, self.path("server.pem"))
        self.assertEqual(tls.key_file, self.path("server.key"))

    def test_cert_file_is_required(self) -> None:
        self.assertError(
            self.listeners({"endpoint": "tcp:8443", "tls": {"key_file": str(self.server.key)}}),
            "server.listeners[0].tls.cert_file: is required",
        )

    def test_key_file_is_required(self) -> None:
        self.assertError(
            self.listeners({"endpoint": "tcp:8443", "tls": {"cert_file": str(self.server.cert)}}),
            "server.listeners[0].tls.key_file: is required",
        )

    def test_missing_cert_file(self) -> None:
        missing = self.path("missing.pem")
        self.assertError(
            self.tls_listener(cert_file=missing),
            f"server.listeners[0].tls.cert_file: {missing!r}: cannot be read: {NO_FILE}",
        )

    def test_missing_key_file(self) -> None:
        missing = self.path("missing.key")
        self.assertError(
            self.tls_listener(key_file=missing),
            f"server.listeners[0].tls.key_file: {missing!r}: cannot be read: {NO_FILE}",
        )

    def test_cert_file_that_is_not_pem(self) -> None:
        path = self.not_pem()
        self.assertError(
            self.tls_listener(cert_file=path),
            f"server.listeners[0].tls.cert_file: {path!r}: no PEM certificate in it",
        )

    def test_cert_file_that_holds_only_a_key(self) -> None:
        key = str(self.server.key)
        self.assertError(
            self.tls_listener(cert_file=key),
            f"server.listeners[0].tls.cert_file: {key!r}: no PEM certificate in it",
        )

    def test_key_file_that_is_not_pem(self) -> None:
        path = self.not_pem()
        self.assertErrorStartsWith(
            self.tls_listener(key_file=path),
            f"server.listeners[0].tls.key_file: {path!r}: not a usable PEM private key: ",
        )

    def test_key_that_does_not_match_the_certificate(self) -> None:
        self.assertError(
            self.tls_listener(key_file=str(self.api.key)),
            f"server.listeners[0].tls.key_file: {str(self.api.key)!r} is not the private key "
            f"of the certificate in {str(self.server.cert)!r}",
        )

    def test_encrypted_key(self) -> None:
        path = self.encrypted_key(self.server)
        self.assertError(
            self.tls_listener(key_file=path),
            f"server.listeners[0].tls.key_file: {path!r}: not a usable PEM private key: it is "
            "encrypted (give an unencrypted key)",
        )

    def test_tls_must_be_a_table(self) -> None:
        errors = self.errors(self.listeners({"endpoint": "tcp:8443", "tls": True}))
        self.assertEqual(errors[0], "server.listeners[0].tls: must be a table, not true")

    def test_unknown_key(self) -> None:
        self.assertError(
            self.tls_listener(ciphers="ALL"),
            "server.listeners[0].tls.ciphers: unknown key (known keys: cert_file, key_file, "
            "certificates, min_version, client_auth, client_ca_file, reload_interval_s)",
        )

    # -- min_version -------------------------------------------------------------------------

    def test_min_version_choices(self) -> None:
        for version in ("TLSv1.2", "TLSv1.3"):
            self.assertEqual(self.loaded_tls(min_version=version).min_version, version)

    def test_older_min_version_is_refused(self) -> None:
        for version in ("TLSv1.1", "TLSv1", "SSLv3", "tlsv1.2", "1.2"):
            self.assertError(
                self.tls_listener(min_version=version),
                f"server.listeners[0].tls.min_version: {version!r} is not one of TLSv1.2, TLSv1.3",
            )

    def test_min_version_is_checked_beside_a_missing_certificate(self) -> None:
        missing = self.path("missing.pem")
        self.assertEqual(
            self.errors(self.tls_listener(cert_file=missing, min_version="TLSv1.0")),
            [
                f"server.listeners[0].tls.cert_file: {missing!r}: cannot be read: {NO_FILE}",
                "server.listeners[0].tls.min_version: 'TLSv1.0' is not one of TLSv1.2, TLSv1.3",
            ],
        )

    # -- client certificates -------------------------------------------------------------------

    def test_client_auth_with_its_ca_file(self) -> None:
        ca = str(self.ca.path)
        for mode in ("optional", "require"):
            tls = self.loaded_tls(client_auth=mode, client_ca_file=ca)
            self.assertEqual((tls.client_auth, tls.client_ca_file), (mode, ca))

    def test_client_auth_needs_client_ca_file(self) -> None:
        for mode in ("optional", "require"):
            self.assertError(
                self.tls_listener(client_auth=mode),
                f"server.listeners[0].tls.client_ca_file: is required with client_auth = "
                f"{mode!r} (the CA bundle client certificates must chain to)",
            )

    def test_client_auth_choices(self) -> None:
        self.assertError(
            self.tls_listener(client_auth="request", client_ca_file=str(self.ca.path)),
            "server.listeners[0].tls.client_auth: 'request' is not one of none, optional, require",
        )

    def test_client_ca_file_without_client_auth_is_read_and_kept(self) -> None:
        tls = self.loaded_tls(client_ca_file=str(self.ca.path))
        self.assertEqual((tls.client_auth, tls.client_ca_file), ("none", str(self.ca.path)))

    def test_missing_client_ca_file(self) -> None:
        missing = self.path("clients-ca.pem")
        self.assertErrorStartsWith(
            self.tls_listener(client_auth="require", client_ca_file=missing),
            f"server.listeners[0].tls.client_ca_file: {missing!r}: ",
        )

    def test_client_ca_file_that_is_not_pem(self) -> None:
        path = self.not_pem()
        self.assertError(
            self.tls_listener(client_auth="require", client_ca_file=path),
            f"server.listeners[0].tls.client_ca_file: {path!r}: no PEM certificate in it",
        )

    def test_relative_client_ca_file(self) -> None:
        data = self.listeners(
            {
                "endpoint": "tcp:8443",
                "tls": {
                    "cert_file": "server.pem",
                    "key_file": "server.key",
                    "client_auth": "require",
                    "client_ca_file": self.ca.path.name,
                },
            }
        )
        tls = self.load(data, base_dir=self.dir).server.listeners[0].tls
        assert tls is not None
        self.assertEqual(tls.client_ca_file, str(self.ca.path))

    # -- certificates by SNI -------------------------------------------------------------------

    def test_certificates_by_server_name(self) -> None:
        wild = self.ca.issue("wild", "*.apps.example.test", dns=["*.apps.example.test"])
        tls = self.loaded_tls(
            certificates=[self.sni("API.Example.Test"), self.sni("*.apps.example.test", wild)]
        )
        self.assertEqual(
            tls.certificates,
            (
                TlsCertificate(str(self.api.cert), str(self.api.key), "api.example.test"),
                TlsCertificate(str(wild.cert), str(wild.key), "*.apps.example.test"),
            ),
        )

    def test_server_names_are_kept_as_clients_send_them(self) -> None:
        # SNI carries no trailing dot (RFC 6066), and names compare in lower case.
        tls = self.loaded_tls(certificates=[self.sni("API.example.test.")])
        self.assertEqual(tls.certificates[0].server_name, "api.example.test")

    def test_two_certificates_for_one_name(self) -> None:
        self.assertError(
            self.tls_listener(
                certificates=[self.sni("api.example.test"), self.sni("API.example.test.")]
            ),
            "server.listeners[0].tls.certificates[1].server_name: 'api.example.test' has "
            "another certificate",
        )

    def test_server_name_is_required(self) -> None:
        entry = self.sni("api.example.test")
        del entry["server_name"]
        self.assertError(
            self.tls_listener(certificates=[entry]),
            "server.listeners[0].tls.certificates[0].server_name: is required",
        )

    def test_files_are_required(self) -> None:
        for key in ("cert_file", "key_file"):
            entry = self.sni("api.example.test")
            del entry[key]
            self.assertError(
                self.tls_listener(certificates=[entry]),
                f"server.listeners[0].tls.certificates[0].{key}: is required",
            )

    def test_bad_server_names(self) -> None:
        for name in ("", "*", "a_b.example", "-api.example.test", "api..test", "a.*.test"):
            self.assertError(
                self.tls_listener(certificates=[self.sni(name)]),
                f"server.listeners[0].tls.certificates[0].server_name: {name!r} is not a DNS "
                "name (or *.name)",
            )

    def test_server_name_too_long(self) -> None:
        name = ".".join(["a" * 63] * 4)
        self.assertError(
            self.tls_listener(certificates=[self.sni(name)]),
            f"server.listeners[0].tls.certificates[0].server_name: {name!r} is not a DNS "
            "name (or *.name)",
        )

    def test_sni_key_that_does_not_match(self) -> None:
        entry = self.sni("api.example.test", key_file=str(self.server.key))
        self.assertError(
            self.tls_listener(certificates=[entry]),
            f"server.listeners[0].tls.certificates[0].key_file: {str(self.server.key)!r} is "
            f"not the private key of the certificate in {str(self.api.cert)!r}",
        )

    def test_missing_sni_cert_file(self) -> None:
        missing = self.path("missing.pem")
        self.assertError(
            self.tls_listener(certificates=[self.sni("api.example.test", cert_file=missing)]),
            f"server.listeners[0].tls.certificates[0].cert_file: {missing!r}: cannot be read: "
            f"{NO_FILE}",
        )

    def test_encrypted_sni_key(self) -> None:
        path = self.encrypted_key(self.api)
        self.assertError(
            self.tls_listener(certificates=[self.sni("api.example.test", key_file=path)]),
            f"server.listeners[0].tls.certificates[0].key_file: {path!r}: not a usable PEM "
            "private key: it is encrypted (give an unencrypted key)",
        )

    def test_certificates_must_be_a_list(self) -> None:
        self.assertError(
            self.tls_listener(certificates=self.sni("api.example.test")),
            "server.listeners[0].tls.certificates: must be a list of { server_name, cert_file, "
            "key_file }",
        )

    def test_unknown_certificate_key(self) -> None:
        self.assertError(
            self.tls_listener(certificates=[self.sni("api.example.test", sni="x")]),
            "server.listeners[0].tls.certificates[0].sni: unknown key (known keys: server_name, "
            "cert_file, key_file)",
        )


# --- [auth.mtls] and routes[].mtls ----------------------------------------------------------------


class MtlsTests(ConfigTestCase):
    """The verified client certificate as a route's credential."""

    def test_defaults(self) -> None:
        c = self.load(config(auth={"mtls": {}}))
        self.assertEqual(c.auth.mtls, MtlsConfig())
        assert c.auth.mtls is not None
        self.assertEqual(c.auth.mtls.policy, MtlsPolicy())
        self.assertFalse(c.auth.mtls.forward_client_cert)

    def test_every_key(self) -> None:
        subjects = ["CN=billing,O=Acme", "cn = reports , o = Acme", "CN=a\\,b+OU=x", "1.2.3=x"]
        sans = ["spiffe://acme/ns/prod/sa/billing", "billing.acme.internal"]
        mtls = {"allowed_subjects": subjects, "allowed_sans": sans, "forward_client_cert": True}
        c = self.load(config(route(auth=["mtls"]), auth={"mtls": mtls}))
        self.assertEqual(c.auth.mtls, MtlsConfig(tuple(subjects), tuple(sans), True))
        assert c.auth.mtls is not None
        self.assertEqual(c.auth.mtls.policy, MtlsPolicy(tuple(subjects), tuple(sans)))
        self.assertEqual(c.routes[0].auth, ("mtls",))
        self.assertIsNone(c.routes[0].mtls)

    def test_subject_without_attribute(self) -> None:
        self.assertError(
            config(auth={"mtls": {"allowed_subjects": ["billing"]}}),
            "auth.mtls.allowed_subjects: ['billing'] has an item 'billing' that is not an RFC "
            "4514 distinguished name like 'CN=billing,O=Acme': 'billing' is not attribute=value",
        )

    def test_subject_with_a_blank_attribute(self) -> None:
        self.assertError(
            config(auth={"mtls": {"allowed_subjects": ["CN=a, =b"]}}),
            "auth.mtls.allowed_subjects: ['CN=a, =b'] has an item 'CN=a, =b' that is not an "
            "RFC 4514 distinguished name like 'CN=billing,O=Acme': '=b' is not attribute=value",
        )

    def test_empty_subject(self) -> None:
        for subject in ("", " , "):
            self.assertError(
                config(auth={"mtls": {"allowed_subjects": [subject]}}),
                f"auth.mtls.allowed_subjects: [{subject!r}] has an item {subject!r} that is not "
                "an RFC 4514 distinguished name like 'CN=billing,O=Acme': it is empty",
            )

    def test_empty_san(self) -> None:
        self.assertError(
            config(auth={"mtls": {"allowed_sans": [""]}}),
            "auth.mtls.allowed_sans: [''] has an item '' that must not be empty",
        )

    def test_lists_of_strings(self) -> None:
        self.assertError(
            config(auth={"mtls": {"allowed_sans": "billing"}}),
            "auth.mtls.allowed_sans: 'billing' is not a list of strings",
        )

    def test_route_needs_the_section(self) -> None:
        self.assertError(
            config(route(auth=["mtls"])),
            "routes[0].auth: uses 'mtls' but [auth.mtls] is not configured",
        )

    def test_route_lists_replace_the_global_ones(self) -> None:
        mtls = {"allowed_sans": ["spiffe://acme/ns/prod/sa/billing"]}
        c = self.load(
            config(
                route(auth=["mtls"], mtls=mtls),
                route("/any/*", auth=["mtls", "api_key"], mtls={}),
                route("/global/*", auth=["mtls"]),
                auth={"mtls": {"allowed_subjects": ["CN=ops"]}, "api_key": {}},
            )
        )
        self.assertEqual(
            c.routes[0].mtls, MtlsPolicy(allowed_sans=("spiffe://acme/ns/prod/sa/billing",))
        )
        self.assertEqual(c.routes[1].mtls, MtlsPolicy())
        self.assertIsNone(c.routes[2].mtls)

    def test_route_lists_need_mtls_in_auth(self) -> None:
        self.assertError(
            config(
                route(auth=["api_key"], mtls={"allowed_sans": ["a"]}),
                auth={"mtls": {}, "api_key": {}},
            ),
            "routes[0].mtls: is only used with 'mtls' in auth",
        )

    def test_route_subjects_are_checked(self) -> None:
        self.assertError(
            config(route(auth=["mtls"], mtls={"allowed_subjects": ["O"]}), auth={"mtls": {}}),
            "routes[0].mtls.allowed_subjects: ['O'] has an item 'O' that is not an RFC 4514 "
            "distinguished name like 'CN=billing,O=Acme': 'O' is not attribute=value",
        )

    def test_route_lists_have_no_forward_client_cert(self) -> None:
        self.assertError(
            config(route(auth=["mtls"], mtls={"forward_client_cert": True}), auth={"mtls": {}}),
            "routes[0].mtls.forward_client_cert: unknown key (known keys: allowed_subjects, "
            "allowed_sans)",
        )

    def test_scopes_do_not_come_from_certificates(self) -> None:
        self.assertError(
            config(route(auth=["mtls"], scopes=["a"]), auth={"mtls": {}}),
            "routes[0].scopes: needs 'jwt' or 'oauth2' in auth (scopes come from the token)",
        )


# --- [auth.oauth2] ------------------------------------------------------------------------------


class OAuth2Tests(ConfigTestCase):
    """Opaque bearer tokens checked at an RFC 7662 introspection endpoint."""

    def oauth2(self, **keys: Any) -> dict[str, Any]:
        """A config whose [auth.oauth2] has the required keys and a secret, then ``keys``
        (a None value leaves that key out)."""
        table = {"introspection_url": INTROSPECTION, "client_id": "avx", "client_secret": "s3"}
        table.update(keys)
        return config(auth={"oauth2": {k: v for k, v in table.items() if v is not None}})

    def loaded(self, **keys: Any) -> OAuth2Config:
        found = self.load(self.oauth2(**keys)).auth.oauth2
        assert found is not None
        return found

    def test_defaults(self) -> None:
        self.assertEqual(
            self.loaded(),
            OAuth2Config(introspection_url=INTROSPECTION, client_id="avx", client_secret="s3"),
        )
        o = self.loaded()
        self.assertEqual(o.client_auth, "basic")
        self.assertEqual((o.cache_ttl_s, o.negative_cache_ttl_s, o.timeout_ms), (60, 5, 2000))
        self.assertEqual((o.issuer, o.audience, o.ca_file, o.client_secret_env), (None,) * 4)
        self.assertEqual(o.forward_claims, ())

    def test_every_key(self) -> None:
        o = self.loaded(
            client_auth="post",
            issuer="https://idp.example.com/",
            audience="avx",
            forward_claims={"sub": "X-User-Id", "client_id": "X-Client-Id"},
            cache_ttl_s=0,
            negative_cache_ttl_s=0,
            timeout_ms=500,
            ca_file=str(self.ca.path),
        )
        self.assertEqual(o.client_auth, "post")
        self.assertEqual((o.issuer, o.audience), ("https://idp.example.com/", "avx"))
        self.assertEqual(o.forward_claims, (("sub", "X-User-Id"), ("client_id", "X-Client-Id")))
        self.assertEqual((o.cache_ttl_s, o.negative_cache_ttl_s, o.timeout_ms), (0, 0, 500))
        self.assertEqual(o.ca_file, str(self.ca.path))

    def test_secret_is_not_in_the_repr(self) -> None:
        self.assertNotIn("s3", repr(self.loaded(client_secret="s3-very-secret")))

    def test_routes_use_it(self) -> None:
        data = self.oauth2()
        data["routes"] = [route(auth=["oauth2"], scopes=["users:read"])]
        c = self.load(data)
        self.assertEqual((c.routes[0].auth, c.routes[0].scopes), (("oauth2",), ("users:read",)))

    def test_route_needs_the_section(self) -> None:
        self.assertError(
            config(route(auth=["oauth2"])),
            "routes[0].auth: uses 'oauth2' but [auth.oauth2] is not configured",
        )

    def test_introspection_url_is_required(self) -> None:
        self.assertError(
            self.oauth2(introspection_url=None), "auth.oauth2.introspection_url: is required"
        )

    def test_client_id_is_required(self) -> None:
        self.assertError(self.oauth2(client_id=None), "auth.oauth2.client_id: is required")

    def test_empty_client_id(self) -> None:
        self.assertError(self.oauth2(client_id=""), "auth.oauth2.client_id: '' must not be empty")

    def test_introspection_url_must_be_https(self) -> None:
        url = "http://idp.example.com/oauth2/introspect"
        self.assertError(
            self.oauth2(introspection_url=url),
            f"auth.oauth2.introspection_url: {url!r} must be https:// (plain http:// only to a "
            "loopback address such as 127.0.0.1)",
        )

    def test_plain_http_to_loopback(self) -> None:
        for url in (
            "http://127.0.0.1:9000/introspect",
            "http://127.1.2.3/introspect",
            "http://localhost:9000/introspect",
            "http://[::1]:9000/introspect",
        ):
            self.assertEqual(self.loaded(introspection_url=url).introspection_url, url)

    def test_loopback_look_alikes_are_not_loopback(self) -> None:
        for url in ("http://localhost.example.com/i", "http://127.0.0.1.nip.io/i"):
            self.assertErrorStartsWith(
                self.oauth2(introspection_url=url),
                f"auth.oauth2.introspection_url: {url!r} must be https://",
            )

    def test_introspection_url_not_a_url(self) -> None:
        for url in ("idp.example.com/introspect", "ftp://idp.example.com/", "https://"):
            self.assertError(
                self.oauth2(introspection_url=url),
                f"auth.oauth2.introspection_url: {url!r} is not an "
                + ("http:// or https:// URL" if url == "https://" else "https:// URL"),
            )

    def test_secret_from_the_environment(self) -> None:
        set_env(self, "AVX_T_OAUTH2_SECRET", "from-env")
        o = self.loaded(client_secret=None, client_secret_env="AVX_T_OAUTH2_SECRET")
        self.assertEqual(
            (o.client_secret, o.client_secret_env), ("from-env", "AVX_T_OAUTH2_SECRET")
        )

    def test_secret_variable_not_set(self) -> None:
        set_env(self, "AVX_T_OAUTH2_SECRET", None)
        self.assertError(
            self.oauth2(client_secret=None, client_secret_env="AVX_T_OAUTH2_SECRET"),
            "auth.oauth2.client_secret_env: environment variable 'AVX_T_OAUTH2_SECRET' is not set",
        )

    def test_secret_variable_empty(self) -> None:
        set_env(self, "AVX_T_OAUTH2_SECRET", "")
        self.assertError(
            self.oauth2(client_secret=None, client_secret_env="AVX_T_OAUTH2_SECRET"),
            "auth.oauth2.client_secret_env: environment variable 'AVX_T_OAUTH2_SECRET' is not set",
        )

    def test_secret_and_secret_env(self) -> None:
        set_env(self, "AVX_T_OAUTH2_SECRET", "from-env")
        self.assertError(
            self.oauth2(client_secret_env="AVX_T_OAUTH2_SECRET"),
            "auth.oauth2.client_secret_env: give client_secret or client_secret_env, not both",
        )

    def test_a_secret_is_required(self) -> None:
        self.assertError(
            self.oauth2(client_secret=None),
            "auth.oauth2.client_secret: is required (or client_secret_env)",
        )

    def test_empty_secret(self) -> None:
        self.assertError(
            self.oauth2(client_secret=""), "auth.oauth2.client_secret: '' must not be empty"
        )

    def test_client_auth_choices(self) -> None:
        self.assertError(
            self.oauth2(client_auth="client_secret_jwt"),
            "auth.oauth2.client_auth: 'client_secret_jwt' is not one of basic, post",
        )

    def test_bounds(self) -> None:
        self.assertError(
            self.oauth2(cache_ttl_s=-1), "auth.oauth2.cache_ttl_s: -1 must be at least 0"
        )
        self.assertError(
            self.oauth2(negative_cache_ttl_s=-1),
            "auth.oauth2.negative_cache_ttl_s: -1 must be at least 0",
        )
        self.assertError(
            self.oauth2(timeout_ms=0), "auth.oauth2.timeout_ms: 0 must be greater than 0"
        )

    def test_missing_ca_file(self) -> None:
        missing = self.path("idp-ca.pem")
        self.assertError(
            self.oauth2(ca_file=missing), f"auth.oauth2.ca_file: {missing!r} does not exist"
        )

    def test_relative_ca_file(self) -> None:
        found = self.load(self.oauth2(ca_file=self.ca.path.name), base_dir=self.dir).auth.oauth2
        assert found is not None
        self.assertEqual(found.ca_file, str(self.ca.path))

    def test_forwarded_claim_to_a_bad_header(self) -> None:
        self.assertError(
            self.oauth2(forward_claims={"sub": "X User"}),
            "auth.oauth2.forward_claims.sub: 'X User' is not a header name",
        )

    def test_unknown_key(self) -> None:
        self.assertError(
            self.oauth2(token_url="https://idp.example.com/token"),
            "auth.oauth2.token_url: unknown key; did you mean 'introspection_url'? (known keys: "
            "introspection_url, client_id, "
            "client_secret, client_secret_env, client_auth, issuer, audience, forward_claims, "
            "cache_ttl_s, negative_cache_ttl_s, timeout_ms, ca_file)",
        )


# --- auth.jwt.oidc_issuer -----------------------------------------------------------------------


class OidcIssuerTests(ConfigTestCase):
    """OIDC discovery finds the JWKS of public-key JWTs."""

    def jwt(self, **keys: Any) -> dict[str, Any]:
        return config(auth={"jwt": keys})

    def test_oidc_issuer_is_enough_key_material(self) -> None:
        c = self.load(self.jwt(algorithms=["RS256", "ES256"], oidc_issuer="https://idp.test/"))
        assert c.auth.jwt is not None
        self.assertEqual(c.auth.jwt.oidc_issuer, "https://idp.test/")
        self.assertIsNone(c.auth.jwt.jwks_url)

    def test_default_is_none(self) -> None:
        c = self.load(self.jwt(secret="s"))
        assert c.auth.jwt is not None
        self.assertIsNone(c.auth.jwt.oidc_issuer)

    def test_not_with_jwks_url(self) -> None:
        self.assertError(
            self.jwt(
                algorithms=["RS256"],
                oidc_issuer="https://idp.test/",
                jwks_url="https://idp.test/jwks.json",
            ),
            "auth.jwt.oidc_issuer: give oidc_issuer (the JWKS is found by discovery) or "
            "jwks_url, not both",
        )

    def test_not_with_hmac_algorithms(self) -> None:
        self.assertError(
            self.jwt(secret="s", oidc_issuer="https://idp.test/"),
            "auth.jwt.oidc_issuer: is for public-key algorithms (RS*, PS*, ES*, EdDSA)",
        )

    def test_must_be_a_url(self) -> None:
        self.assertError(
            self.jwt(algorithms=["RS256"], oidc_issuer="idp.test"),
            "auth.jwt.oidc_issuer: 'idp.test' is not an https:// URL",
        )

    def test_must_be_https_except_to_loopback(self) -> None:
        self.assertError(
            self.jwt(algorithms=["RS256"], oidc_issuer="http://idp.test/"),
            "auth.jwt.oidc_issuer: 'http://idp.test/' must be https:// (plain http:// only to "
            "a loopback address such as 127.0.0.1)",
        )
        c = self.load(self.jwt(algorithms=["RS256"], oidc_issuer="http://127.0.0.1:9000/"))
        assert c.auth.jwt is not None
        self.assertEqual(c.auth.jwt.oidc_issuer, "http://127.0.0.1:9000/")

    def test_public_key_algorithms_name_it_among_the_key_sources(self) -> None:
        self.assertError(
            self.jwt(algorithms=["RS256"]),
            "auth.jwt.public_key_file: public-key algorithms need 'public_key_file', "
            "'jwks_url' or 'oidc_issuer'",
        )


# --- routes[].upstream: client certificates and server_name --------------------------------------


class UpstreamTlsTests(ConfigTestCase):
    """mTLS to upstreams and the name their certificates must carry."""

    def upstream(self, **keys: Any) -> dict[str, Any]:
        return config(route(upstream={"urls": [HTTPS_URL], **keys}))

    def client_cert(self, **keys: Any) -> dict[str, Any]:
        keys.setdefault("client_cert_file", str(self.client.cert))
        keys.setdefault("client_key_file", str(self.client.key))
        return self.upstream(**keys)

    def test_client_certificate(self) -> None:
        u = self.load(self.client_cert()).routes[0].upstream
        assert u is not None
        self.assertEqual(
            (u.client_cert_file, u.client_key_file), (str(self.client.cert), str(self.client.key))
        )
        self.assertEqual(u.server_name, "")

    def test_defaults(self) -> None:
        u = self.load(self.upstream()).routes[0].upstream
        assert u is not None
        self.assertEqual((u.client_cert_file, u.client_key_file, u.server_name), (None, None, ""))

    def test_certificate_and_key_in_one_file(self) -> None:
        both = self.combined(self.client)
        u = self.load(self.client_cert(client_cert_file=both, client_key_file=both)).routes[0]
        assert u.upstream is not None
        self.assertEqual(u.upstream.client_cert_file, both)

    def test_relative_files(self) -> None:
        data = self.client_cert(client_cert_file="client.pem", client_key_file="client.key")
        u = self.load(data, base_dir=self.dir).routes[0].upstream
        assert u is not None
        self.assertEqual(
            (u.client_cert_file, u.client_key_file),
            (self.path("client.pem"), self.path("client.key")),
        )

    def test_server_name(self) -> None:
        for name in ("Users.Internal", "users.internal."):
            u = self.load(self.upstream(server_name=name)).routes[0].upstream
            assert u is not None
            self.assertEqual(u.server_name, "users.internal")

    def test_client_cert_file_needs_client_key_file(self) -> None:
        self.assertError(
            self.upstream(client_cert_file=str(self.client.cert)),
            "routes[0].upstream.client_key_file: is required with client_cert_file",
        )

    def test_client_key_file_needs_client_cert_file(self) -> None:
        self.assertError(
            self.upstream(client_key_file=str(self.client.key)),
            "routes[0].upstream.client_cert_file: is required with client_key_file",
        )

    def test_client_certificate_needs_an_https_upstream(self) -> None:
        data = self.client_cert()
        data["routes"][0]["upstream"]["urls"] = [UPSTREAM_URL, "http://127.0.0.1:9002"]
        self.assertError(
            data, "routes[0].upstream.client_cert_file: is only used with https:// upstream URLs"
        )

    def test_one_https_url_is_enough(self) -> None:
        data = self.client_cert()
        data["routes"][0]["upstream"]["urls"] = [UPSTREAM_URL, HTTPS_URL]
        self.assertEqual(self.load(data).routes[0].upstream.urls, (UPSTREAM_URL, HTTPS_URL))

    def test_https_in_capitals_is_https(self) -> None:
        data = self.client_cert()
        data["routes"][0]["upstream"]["urls"] = ["HTTPS://users.internal:8443"]
        u = self.load(data).routes[0].upstream
        assert u is not None
        self.assertEqual(u.client_cert_file, str(self.client.cert))

    def test_server_name_needs_an_https_upstream(self) -> None:
        self.assertError(
            config(route(upstream={"urls": [UPSTREAM_URL], "server_name": "users.internal"})),
            "routes[0].upstream.server_name: is only used with https:// upstream URLs",
        )

    def test_server_name_is_not_a_wildcard(self) -> None:
        self.assertError(
            self.upstream(server_name="*.internal"),
            "routes[0].upstream.server_name: '*.internal' is a wildcard; give the one name to "
            "send as SNI and verify",
        )

    def test_bad_server_name(self) -> None:
        for name in ("", "users_internal", "users..internal", "-users.internal"):
            self.assertError(
                self.upstream(server_name=name),
                f"routes[0].upstream.server_name: {name!r} is not a DNS name",
            )

    def test_missing_client_cert_file(self) -> None:
        missing = self.path("missing.pem")
        self.assertError(
            self.client_cert(client_cert_file=missing),
            f"routes[0].upstream.client_cert_file: {missing!r}: cannot be read: {NO_FILE}",
        )

    def test_missing_client_key_file(self) -> None:
        missing = self.path("missing.key")
        self.assertError(
            self.client_cert(client_key_file=missing),
            f"routes[0].upstream.client_key_file: {missing!r}: cannot be read: {NO_FILE}",
        )

    def test_client_cert_file_that_is_not_pem(self) -> None:
        path = self.not_pem()
        self.assertError(
            self.client_cert(client_cert_file=path),
            f"routes[0].upstream.client_cert_file: {path!r}: no PEM certificate in it",
        )

    def test_client_key_that_does_not_match(self) -> None:
        self.assertError(
            self.client_cert(client_key_file=str(self.server.key)),
            f"routes[0].upstream.client_key_file: {str(self.server.key)!r} is not the private "
            f"key of the certificate in {str(self.client.cert)!r}",
        )

    def test_encrypted_client_key(self) -> None:
        path = self.encrypted_key(self.client)
        self.assertError(
            self.client_cert(client_key_file=path),
            f"routes[0].upstream.client_key_file: {path!r}: not a usable PEM private key: it "
            "is encrypted (give an unencrypted key)",
        )


# --- rate_limiting.key = "consumer" ---------------------------------------------------------------


class ConsumerRateLimitTests(ConfigTestCase):
    """One bucket per authenticated consumer, whichever authenticator found it."""

    def test_global_key(self) -> None:
        c = self.load(config(rate_limiting={"key": "consumer"}))
        self.assertEqual(c.rate_limiting.key, "consumer")

    def test_route_key(self) -> None:
        c = self.load(config(route(rate_limit={"key": "consumer"})))
        rate = c.routes[0].rate_limit
        assert rate is not None
        self.assertEqual(rate.key, "consumer")
