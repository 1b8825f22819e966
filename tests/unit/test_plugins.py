"""The plugin API: loading (entry points, registry, API version), config errors with key paths,
the header views, answers; and the config keys that name plugins."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted import plugins
from avx_twisted.config import ConfigError, GatewayConfig
from avx_twisted.h1 import Fields


class Tagger:
    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        self.header = config.header("header")
        self.value = config.str("value", "on")
        self.times = config.int("times", 1, minimum=1)
        if self.value == "forbidden":
            config.error("value", "'forbidden' is not allowed")

    def on_request(self, request: Any, ctx: Any) -> None:
        request.headers.set(self.header, self.value)


class Refuser:
    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        raise RuntimeError("cannot start: no license\nsecond line")


class Future:
    api_version = 2

    def __init__(self, config: plugins.PluginConfig) -> None:
        pass

    def on_request(self, request: Any, ctx: Any) -> None:
        pass


class Idle:
    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        pass


class PluginTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        for name, factory in [
            ("tagger", Tagger),
            ("refuser", Refuser),
            ("future", Future),
            ("idle", Idle),
        ]:
            plugins.register(name, factory)
            self.addCleanup(plugins.unregister, name)


class LoadTests(PluginTestCase):
    def test_a_plugin_is_made_from_its_config(self) -> None:
        plugin, errors = plugins.load("tagger", {"header": "X-Tag", "times": 3}, "p")
        self.assertEqual(errors, [])
        self.assertEqual((plugin.header, plugin.value, plugin.times), ("X-Tag", "on", 3))

    def test_config_errors_have_key_paths(self) -> None:
        _, errors = plugins.load(
            "tagger", {"header": 42, "times": 0, "extra": True}, "routes[2].plugins[0]"
        )
        self.assertIn("routes[2].plugins[0].config.header: 42 is not a string", errors)
        self.assertIn("routes[2].plugins[0].config.times: 0 must be at least 1", errors)
        self.assertIn(
            "routes[2].plugins[0].config.extra: unknown key (known keys: header, times, value)",
            errors,
        )

    def test_missing_required_key_and_the_plugins_own_check(self) -> None:
        _, errors = plugins.load("tagger", {"value": "forbidden"}, "p")
        self.assertEqual(
            errors,
            ["p.config.header: is required", "p.config.value: 'forbidden' is not allowed"],
        )
        _, errors = plugins.load("tagger", {"header": "bad header"}, "p")
        self.assertEqual(errors, ["p.config.header: 'bad header' is not a header name"])

    def test_unknown_names_list_the_installed_ones(self) -> None:
        _, errors = plugins.load("nope", {}, "plugins.global[0]")
        self.assertEqual(len(errors), 1)
        self.assertTrue(
            errors[0].startswith(
                "plugins.global[0].name: 'nope' is not an installed plugin (installed: "
            ),
            errors,
        )
        for name in ("tagger", "refuser", "idle"):
            self.assertIn(name, errors[0])

    def test_other_api_versions_are_refused(self) -> None:
        _, errors = plugins.load("future", {}, "p")
        self.assertEqual(
            errors,
            [
                "p.name: plugin 'future' declares plugin API version 2; this gateway implements "
                "version 1"
            ],
        )

    def test_a_factory_that_raises_is_a_config_error_of_one_line(self) -> None:
        _, errors = plugins.load("refuser", {}, "p")
        self.assertEqual(
            errors,
            ["p.config: plugin 'refuser' refused it: RuntimeError: cannot start: no license"],
        )

    def test_a_plugin_without_phases_is_refused(self) -> None:
        _, errors = plugins.load("idle", {}, "p")
        self.assertTrue(errors[0].startswith("p.name: plugin 'idle' implements none of"))

    def test_entry_points_are_listed(self) -> None:
        # The registry adds to whatever distributions expose; it is a dict by name.
        self.assertIn("tagger", plugins.installed())


class ViewTests(SynchronousTestCase):
    def test_headers_are_text_and_refuse_injection(self) -> None:
        fields = Fields([(b"X-A", b"1"), (b"x-a", b"2")])
        headers = plugins.Headers(fields)
        self.assertEqual(headers.get("x-A"), "2")
        self.assertEqual(headers.get_all("X-a"), ["1", "2"])
        self.assertIn("X-A", headers)
        headers.set("X-A", "3")
        headers.add("X-B", "b")
        self.assertEqual(list(headers.items()), [("X-A", "3"), ("X-B", "b")])
        headers.remove("x-b")
        self.assertEqual(fields.pairs, [(b"X-A", b"3")])
        with self.assertRaises(ValueError):
            headers.set("X-A", "a\r\nSet-Cookie: x=1")
        with self.assertRaises(ValueError):
            headers.set("Bad Name", "x")

    def test_reply_and_error(self) -> None:
        answer = plugins.reply(200, json_body={"ok": True})
        self.assertEqual(answer.status, 200)
        self.assertIn((b"Content-Type", b"application/json"), answer.fields)
        self.assertEqual(answer.body, b'{"ok": true}\n')
        text = plugins.reply(418, "short and stout", headers=[("X-Pot", "tea")])
        self.assertEqual(text.body, b"short and stout")
        self.assertIn((b"X-Pot", b"tea"), text.fields)

        class Ctx:
            request_id = "abc"

        err = plugins.error(403, "forbidden header", Ctx())
        self.assertEqual(
            err.body, b'{"error": "forbidden header", "status": 403, "request_id": "abc"}\n'
        )


def config(**extra: Any) -> GatewayConfig:
    route = {"path": "/*", "upstream": {"urls": ["http://127.0.0.1:9"]}}
    route.update(extra.pop("route", {}))
    return GatewayConfig.from_dict({"routes": [route], **extra})


class ConfigKeyTests(PluginTestCase):
    def test_route_and_global_plugins(self) -> None:
        loaded = config(
            plugins={"global": [{"name": "tagger", "config": {"header": "X-G"}}]},
            route={},
        )
        self.assertEqual([r.name for r in loaded.plugins.global_], ["tagger"])
        self.assertIsInstance(loaded.plugins.global_[0].instance, Tagger)
        self.assertEqual(loaded.routes[0].plugins, ())
        own = config(route={"plugins": [{"name": "tagger", "config": {"header": "X-R"}}]})
        self.assertEqual(own.routes[0].plugins[0].instance.header, "X-R")
        self.assertEqual(own.routes[0].plugins[0].config, {"header": "X-R"})

    def test_errors_of_plugins_come_with_the_files(self) -> None:
        with self.assertRaises(ConfigError) as e:
            config(
                server={"port": "x"},
                route={
                    "plugins": [
                        {"name": "tagger", "config": {"header": 1}},
                        {"config": {}},
                        {"name": "nope"},
                    ]
                },
            )
        errors = e.exception.errors
        self.assertIn("server.port: 'x' is not an integer", errors)
        self.assertIn("routes[0].plugins[0].config.header: 1 is not a string", errors)
        self.assertIn("routes[0].plugins[1].name: is required", errors)
        self.assertTrue(
            any(
                x.startswith("routes[0].plugins[2].name: 'nope' is not an installed")
                for x in errors
            )
        )

    def test_the_same_plugin_twice_on_a_route_is_an_error(self) -> None:
        tag = {"name": "tagger", "config": {"header": "X-T"}}
        with self.assertRaises(ConfigError) as e:
            config(route={"plugins": [tag, tag]})
        self.assertTrue(
            any(
                x.startswith("routes[0].plugins[1].name: plugin 'tagger' is already on this route")
                for x in e.exception.errors
            )
        )
        with self.assertRaises(ConfigError) as e:
            config(plugins={"global": [tag]}, route={"plugins": [tag]})
        self.assertTrue(
            any(
                x.startswith("routes[0].plugins[0].name: plugin 'tagger' is already")
                for x in e.exception.errors
            )
        )

    def test_bad_shapes(self) -> None:
        with self.assertRaises(ConfigError) as e:
            config(
                route={"plugins": {"name": "tagger"}},
                plugins={"global": [{"name": "tagger", "config": 3, "x": 1}]},
            )
        errors = e.exception.errors
        self.assertIn(
            "routes[0].plugins: must be a list of { name = ..., config = {...} } tables", errors
        )
        self.assertIn("plugins.global[0].config: 3 is not a table", errors)
        self.assertTrue(any(x.startswith("plugins.global[0].x: unknown key") for x in errors))

    def test_tracing_keys(self) -> None:
        self.assertIsNone(config().tracing)
        loaded = config(
            tracing={"exporter": "console", "sample_ratio": 0.5, "response_header": "X-Trace-Id"}
        )
        self.assertEqual(loaded.tracing.exporter, "console")
        self.assertEqual(loaded.tracing.sample_ratio, 0.5)
        with self.assertRaises(ConfigError) as e:
            config(
                tracing={
                    "exporter": "jaeger",
                    "sample_ratio": 2,
                    "endpoint": "nope",
                    "response_header": "bad header",
                }
            )
        errors = e.exception.errors
        self.assertIn("tracing.exporter: 'jaeger' is not one of otlp, console", errors)
        self.assertIn("tracing.sample_ratio: 2 is not between 0 and 1", errors)
        self.assertIn("tracing.endpoint: 'nope' is not an http:// or https:// URL", errors)
        self.assertIn("tracing.response_header: 'bad header' is not a header name", errors)
