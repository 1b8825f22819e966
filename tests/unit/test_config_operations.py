"""Config keys for operations: ``${env.NAME}`` substitution, listeners that can really be opened,
private metrics/probe listeners, log options, the shutdown delay."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.config import ConfigError, GatewayConfig

ROUTES = [{"path": "/api/*", "upstream": {"urls": ["http://127.0.0.1:9001"]}}]


def load(**tables: Any) -> GatewayConfig:
    return GatewayConfig.from_dict({"routes": ROUTES, **tables})


def errors(**tables: Any) -> list[str]:
    try:
        load(**tables)
    except ConfigError as e:
        return e.errors
    raise AssertionError("the config was accepted")


class EnvSubstitutionTests(SynchronousTestCase):
    def setUp(self) -> None:
        os.environ["AVX_TEST_PW"] = "s3cr:t@x"
        os.environ.pop("AVX_TEST_MISSING", None)
        self.addCleanup(os.environ.pop, "AVX_TEST_PW", None)

    def test_a_variable_is_substituted_in_any_string(self) -> None:
        config = load(
            rate_limiting={"redis_url": "redis://:${env.AVX_TEST_PW}@127.0.0.1:6379/0"},
            server={"listen": ["tcp:${env.AVX_TEST_PORT:-8089}:interface=127.0.0.1"]},
        )
        self.assertEqual(config.rate_limiting.redis_url, "redis://:s3cr:t@x@127.0.0.1:6379/0")
        self.assertEqual(config.server.listen, ("tcp:8089:interface=127.0.0.1",))

    def test_an_empty_default_is_allowed(self) -> None:
        config = load(logging={"skip_paths": ["/x${env.AVX_TEST_MISSING:-}"]})
        self.assertEqual(config.logging.skip_paths, ("/x",))

    def test_a_missing_variable_is_reported_with_its_key_path(self) -> None:
        found = errors(
            routes=[{"path": "/a", "upstream": {"urls": ["http://${env.AVX_TEST_MISSING}"]}}]
        )
        self.assertIn(
            "routes[0].upstream.urls[0]: environment variable 'AVX_TEST_MISSING' is not set "
            "(${env.AVX_TEST_MISSING:-default} gives a default)",
            found,
        )

    def test_a_bad_name_is_reported(self) -> None:
        found = errors(server={"host": "${env.1BAD}"})
        self.assertTrue(any(e.startswith("server.host: ${env.1BAD} is not a valid") for e in found))

    def test_other_templates_and_escapes_are_left_alone(self) -> None:
        config = load(server={"server_header": "a${client_ip}$${env.X}"})
        self.assertEqual(config.server.server_header, "a${client_ip}$${env.X}")


class ListenerTests(SynchronousTestCase):
    def test_host_must_be_an_address_or_a_host_name(self) -> None:
        for bad, why in [
            ("999.1.1.1", "is not a valid IP address"),
            ("1.2.3", "is not a valid IP address"),
            ("not a host", "is not an IP address or a host name"),
            ("-x.example", "is not an IP address or a host name"),
        ]:
            self.assertIn(f"server.host: {bad!r} {why}", errors(server={"host": bad}))
        for good in ("0.0.0.0", "::", "127.0.0.1", "localhost", "gw.example.com"):
            self.assertEqual(load(server={"host": good}).server.host, good)

    def test_workers_need_shareable_listeners(self) -> None:
        for endpoint in ("unix:/tmp/avx.sock", "systemd:domain=INET:index=0", "haproxy:tcp:8080"):
            found = errors(server={"workers": 2, "listen": [endpoint]})
            self.assertTrue(
                any(
                    e.startswith(f"server.listen: {endpoint!r} cannot be shared by 2 worker")
                    for e in found
                ),
                found,
            )
            load(server={"workers": 1, "listen": [endpoint]})
        load(server={"workers": 2, "listen": ["tcp:8080", "tcp6:8081"]})

    def test_two_listeners_on_one_port_are_refused(self) -> None:
        found = errors(
            server={"port": 8080, "host": "127.0.0.1"},
            metrics={"listen": "tcp:8080:interface=127.0.0.1"},
        )
        self.assertIn(
            "metrics.listen: 'tcp:8080:interface=127.0.0.1': port 8080 is already used by "
            "server.host/port",
            found,
        )
        found = errors(health={"listen": "tcp:9090"}, metrics={"listen": "tcp:9090"})
        self.assertTrue(any(e.startswith("health.listen:") for e in found), found)
        # Port 0 (any free port) never clashes.
        load(health={"listen": "tcp:0"}, metrics={"listen": "tcp:0"})

    def test_private_listeners_free_their_paths_on_the_data_plane(self) -> None:
        shared = load()
        self.assertIn("metrics.path", shared.internal_paths())
        private = load(
            metrics={"listen": "tcp:9090:interface=127.0.0.1"},
            health={"listen": "tcp:8081"},
            routes=[
                {"path": "/*", "upstream": {"urls": ["http://a"]}},
                {"path": "/metrics", "upstream": {"urls": ["http://a"]}},
                {"path": "/healthz", "upstream": {"urls": ["http://a"]}},
            ],
        )
        self.assertEqual(private.internal_paths(), {})
        self.assertEqual(private.metrics.listen, "tcp:9090:interface=127.0.0.1")
        self.assertEqual(private.health.listen, "tcp:8081")

    def test_listen_must_be_an_endpoint(self) -> None:
        found = errors(metrics={"listen": "nope:1"})
        self.assertTrue(
            any(e.startswith("metrics.listen: 'nope:1' is not a valid Twisted") for e in found)
        )


class OperationKeyTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = load()
        self.assertEqual(config.server.shutdown_delay_ms, 0)
        self.assertEqual(config.logging.event_format, "text")
        self.assertEqual(config.logging.sample_ratio, 1.0)
        self.assertEqual(config.logging.skip_paths, ())
        self.assertEqual((config.metrics.listen, config.health.listen), ("", ""))

    def test_values_are_checked(self) -> None:
        found = errors(
            server={"shutdown_delay_ms": -1},
            logging={"event_format": "xml", "sample_ratio": 1.5, "skip_paths": ["healthz"]},
        )
        self.assertIn("server.shutdown_delay_ms: -1 must be at least 0", found)
        self.assertIn("logging.event_format: 'xml' is not one of text, json", found)
        self.assertIn("logging.sample_ratio: 1.5 is not between 0 and 1", found)
        self.assertTrue(
            any(e.startswith("logging.skip_paths: ['healthz'] has an item") for e in found)
        )

    def test_values_are_kept(self) -> None:
        config = load(
            server={"shutdown_delay_ms": 5000},
            logging={"event_format": "json", "sample_ratio": 0.25, "skip_paths": ["/healthz"]},
        )
        self.assertEqual(config.server.shutdown_delay_ms, 5000)
        self.assertEqual(
            (config.logging.event_format, config.logging.sample_ratio, config.logging.skip_paths),
            ("json", 0.25, ("/healthz",)),
        )
