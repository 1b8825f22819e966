"""Tests for avx_twisted.config_schema: the committed JSON Schema is current, valid, and agrees
with the parser (which keys, types, bounds, choices, defaults and required keys).

Most tests probe the parser itself: they put one value at one key of an otherwise valid config
and check that the parser and the schema agree on it, for every key the schema has. A key added
to the parser therefore fails here until the schema (and docs/gateway.schema.json) follows.
"""

from __future__ import annotations

import ast
import copy
import difflib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import twisted.test
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from avx_twisted import _configparse, plugins
from avx_twisted.config import ConfigError, GatewayConfig
from avx_twisted.config_schema import DRAFT, build_schema, dumps, main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "docs" / "gateway.schema.json"
REGENERATE = "python -m avx_twisted.config_schema > docs/gateway.schema.json"
#: A certificate and its key in one PEM file, shipped with Twisted's own tests.
SERVER_PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")
UPSTREAM = "http://127.0.0.1:9001"
#: A twisted.web resource for ``routes[].resource`` (load_resource calls a factory taking no
#: arguments: this one answers 404).
RESOURCE = "twisted.web.pages:notFound"
#: The name the probe plugin is registered under while a test runs.
PLUGIN = "avx-schema-probe"

SCHEMA = build_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

#: The tables each key tuple of the parser describes, as schema paths ("[]": array items).
PARSER_TUPLES = {
    "_TOP_KEYS": ("",),
    "_SERVER_KEYS": ("server",),
    "_ROUTE_KEYS": ("routes[]",),
    "_UPSTREAM_KEYS": ("routes[].upstream",),
    "_HEALTH_CHECK_KEYS": ("routes[].upstream.health_check",),
    "_BREAKER_KEYS": ("routes[].upstream.circuit_breaker",),
    "_ROUTE_RATE_KEYS": ("routes[].rate_limit",),
    "_RATE_KEYS": ("rate_limiting",),
    "_CORS_KEYS": ("cors",),
    "_JWT_KEYS": ("auth.jwt",),
    "_API_KEY_KEYS": ("auth.api_key",),
    "_METRICS_KEYS": ("metrics",),
    "_HEALTH_KEYS": ("health",),
    "_LOGGING_KEYS": ("logging",),
    "_TRACING_KEYS": ("tracing",),
    "_PLUGINS_KEYS": ("plugins",),
    "_PLUGIN_REF_KEYS": ("routes[].plugins[]", "plugins.global[]"),
}

#: A valid config every probe starts from: one route, and both authenticators configured so
#: that a route may name either.
BASE: dict[str, Any] = {
    "routes": [{"path": "/api/*", "upstream": {"urls": [UPSTREAM]}}],
    "auth": {"jwt": {"secret": "s"}, "api_key": {}},
}
#: What a table needs, besides the key under test, to be valid when it is added to BASE.
CONTEXT: dict[str, dict[str, Any]] = {
    "auth.api_key.keys[]": {"name": "ci", "sha256": DIGEST},
    "admin": {"token_sha256": DIGEST},
    "routes[].plugins[]": {"name": PLUGIN},
    "plugins.global[]": {"name": PLUGIN},
}
#: Sibling keys a key needs to be valid at all.
NEEDS: dict[str, dict[str, Any]] = {
    "routes[].upstream.weights": {"strategy": "weighted"},
    "routes[].scopes": {"auth": ["jwt"]},
}
#: Sibling keys a key cannot be given with (left out of its probes).
EXCLUDES: dict[str, tuple[str, ...]] = {
    "routes[].resource": ("upstream",),
}


class ProbePlugin:
    """The smallest plugin: one phase, and one optional config key."""

    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        self.greeting = config.str("greeting", "hello")

    def on_request(self, request: Any, ctx: Any) -> None:
        return None


class PluginTestCase(SynchronousTestCase):
    """Tests whose configs name the probe plugin: it is installed while each runs."""

    def setUp(self) -> None:
        plugins.register(PLUGIN, ProbePlugin)
        self.addCleanup(plugins.unregister, PLUGIN)


# --- helpers ----------------------------------------------------------------------------------


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def dotted(path: str) -> str:
    """A schema path as the parser names it in errors (first entry of each array)."""
    return path.replace("[]", "[0]")


def tables(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every table of the schema with its path, the document itself first."""
    yield path, schema
    for key, prop in schema.get("properties", {}).items():
        if "properties" in prop:
            yield from tables(prop, join(path, key))
        elif prop.get("type") == "array" and "properties" in prop.get("items", {}):
            yield from tables(prop["items"], join(path, key) + "[]")


def keys(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(table path, key, key schema) of every key of every table."""
    for path, table in tables(schema):
        for key, prop in table["properties"].items():
            yield path, key, prop


def enum_of(schema: dict[str, Any]) -> list[Any] | None:
    """The choices of a string schema, also when they sit beside an env-reference alternative."""
    if "enum" in schema:
        return schema["enum"]
    for branch in schema.get("anyOf", ()):
        if "enum" in branch:
            return branch["enum"]
    return None


def config_at(path: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """BASE with the table at ``path`` (and its CONTEXT) present, holding ``values``."""
    data = copy.deepcopy(BASE)
    node = data
    here = ""
    for part in path.split(".") if path else ():
        here = join(here, part)
        if part.endswith("[]"):
            node = node.setdefault(part[:-2], [{}])[0]
        else:
            node = node.setdefault(part, {})
        for key, value in CONTEXT.get(here, {}).items():
            node.setdefault(key, copy.deepcopy(value))
    node.update(values or {})
    return data


def table_of(data: dict[str, Any], path: str) -> dict[str, Any]:
    """The table at ``path`` in ``data`` (the first entry of each array)."""
    node = data
    for part in path.split(".") if path else ():
        node = node[part[:-2]][0] if part.endswith("[]") else node[part]
    return node


def probe(path: str, key: str, value: Any) -> dict[str, Any]:
    """A config holding ``value`` at ``path.key``, with the siblings that key needs and without
    those it excludes."""
    data = config_at(path, {**copy.deepcopy(NEEDS.get(join(path, key), {})), key: value})
    table = table_of(data, path)
    for sibling in EXCLUDES.get(join(path, key), ()):
        table.pop(sibling, None)
    return data


def alternatives(table: dict[str, Any]) -> list[str]:
    """The keys of which the table must have exactly one (its ``oneOf`` of ``required``)."""
    branches = table.get("oneOf", ())
    assert all(set(b) == {"required"} and len(b["required"]) == 1 for b in branches), branches
    return [branch["required"][0] for branch in branches]


def parser_errors(data: dict[str, Any], base_dir: str | None = None) -> list[str]:
    try:
        GatewayConfig.from_dict(copy.deepcopy(data), base_dir=base_dir)
    except ConfigError as e:
        return e.errors
    return []


def schema_errors(data: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(data)
    ]


def temp_dir(case: SynchronousTestCase) -> str:
    path = tempfile.mkdtemp(prefix="avx-schema-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def provide_files(data: Any, directory: str) -> None:
    """Create what the strings of a config name: each ``*.pem`` (a real certificate and key) and
    the directory of an access log, relative ones under ``directory``."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "access_log" and isinstance(value, str) and value != "-":
                parent = os.path.dirname(os.path.join(directory, value))
                os.makedirs(parent, exist_ok=True)
            provide_files(value, directory)
    elif isinstance(data, list):
        for value in data:
            provide_files(value, directory)
    elif isinstance(data, str):
        for name in re.findall(r"[\w./-]+\.pem", data):
            target = os.path.join(directory, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                shutil.copyfile(SERVER_PEM, target)


def embedded_toml(text: str) -> str | None:
    """The TOML under ``gateway.toml: |`` in a YAML manifest, dedented, if it has one."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "gateway.toml: |"), None)
    if start is None:
        return None
    key_indent = len(lines[start]) - len(lines[start].lstrip())
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= key_indent:
            break
        block.append(line)
    indent = min((len(line) - len(line.lstrip()) for line in block if line.strip()), default=0)
    return "\n".join(line[indent:] for line in block) + "\n"


def helm_values_config(path: Path) -> str | None:
    """The chart's default gateway config (``config`` in values.yaml) with the plain
    ``{{ .Values.x.y }}`` and ``{{ .Release.Namespace }}`` it uses filled in."""
    import yaml

    values = yaml.safe_load(path.read_text())
    if not isinstance(values, dict) or not isinstance(values.get("config"), str):
        return None

    def lookup(match: re.Match[str]) -> str:
        if match.group(1) == ".Release.Namespace":
            return "default"
        node: Any = values
        for part in match.group(1).split(".")[2:]:
            node = node[part]
        return str(node)

    pattern = r"\{\{\s*(\.Values(?:\.\w+)+|\.Release\.Namespace)\s*\}\}"
    text = re.sub(pattern, lookup, values["config"])
    assert "{{" not in text, f"{path}: config uses template forms this test cannot fill in"
    return text


def shipped_configs() -> dict[str, str]:
    """Every gateway config the repository ships, by file: TOML files, configs embedded in
    Kubernetes manifests (templates aside) and the Helm chart's default."""
    found: dict[str, str] = {}
    for pattern in ("config/*.toml", "avx_twisted/*.toml", "deploy/**/*.toml"):
        for path in REPO.glob(pattern):
            found[str(path.relative_to(REPO))] = path.read_text()
    for path in REPO.glob("deploy/**/*.yaml"):
        text = path.read_text()
        if "{{" in text:
            continue
        toml = embedded_toml(text)
        if toml is not None:
            found[str(path.relative_to(REPO))] = toml
    for path in REPO.glob("deploy/helm/*/values.yaml"):
        toml = helm_values_config(path)
        if toml is not None:
            found[str(path.relative_to(REPO))] = toml
    return found


def markdown_toml_block(text: str, heading: str) -> str:
    """The first ```toml block after ``heading`` in a Markdown text."""
    after = text.split(heading, 1)[1]
    return after.split("```toml\n", 1)[1].split("```", 1)[0]


def module_toml_strings(path: Path) -> list[str]:
    """The string constants of a Python module that are TOML documents with routes."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                data = tomllib.loads(node.value)
            except tomllib.TOMLDecodeError:
                continue
            if "routes" in data:
                found.append(node.value)
    return found


# --- the file and the generator ---------------------------------------------------------------


class GeneratorTests(SynchronousTestCase):
    def test_committed_file_is_the_generated_schema(self) -> None:
        committed = SCHEMA_FILE.read_text(encoding="utf-8")
        generated = dumps()
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(True),
                    generated.splitlines(True),
                    "docs/gateway.schema.json",
                    "build_schema()",
                )
            )[:40]
        )
        self.assertTrue(
            committed == generated,
            f"docs/gateway.schema.json is stale; regenerate it with `{REGENERATE}`\n{diff}",
        )

    def test_the_file_is_indented_json_ending_in_a_newline(self) -> None:
        text = dumps()
        self.assertEqual(json.loads(text), SCHEMA)
        self.assertTrue(text.endswith("}\n"))
        self.assertIn('\n  "properties": {\n', text)

    def test_build_is_stable(self) -> None:
        self.assertEqual(dumps(build_schema()), dumps(build_schema()))

    def test_main_prints_the_schema(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(main([]), 0)
        self.assertEqual(out.getvalue(), dumps())

    def test_main_writes_a_path(self) -> None:
        path = os.path.join(temp_dir(self), "gateway.schema.json")
        self.assertEqual(main([path]), 0)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), dumps())

    def test_main_refuses_options(self) -> None:
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(main(["--help"]), 2)


class SchemaValidityTests(SynchronousTestCase):
    def test_schema_is_a_valid_draft_2020_12_schema(self) -> None:
        self.assertEqual(SCHEMA["$schema"], DRAFT)
        jsonschema.Draft202012Validator.check_schema(SCHEMA)

    def test_schema_is_also_a_valid_draft_07_schema(self) -> None:
        # Older Taplo releases validate with draft-07 whatever "$schema" says.
        jsonschema.Draft7Validator.check_schema({k: v for k, v in SCHEMA.items() if k != "$schema"})
        newer = {"$defs", "$ref", "dependentSchemas", "dependentRequired", "prefixItems"}
        newer |= {"unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$anchor"}
        used = set(re.findall(r'"(\$?\w+)":', json.dumps(SCHEMA)))
        self.assertEqual(used & newer, set())

    def test_patterns_need_no_lookaround(self) -> None:
        # Taplo's regex engine (Rust's regex) has no lookaround or backreferences.
        patterns = re.findall(r'"pattern": ("(?:[^"\\]|\\.)*")', dumps())
        self.assertNotEqual(patterns, [])
        for pattern in map(json.loads, patterns):
            re.compile(pattern)
            self.assertNotIn("(?", pattern)

    def test_every_key_has_a_one_line_description(self) -> None:
        for path, key, prop in keys(SCHEMA):
            text = prop.get("description", "")
            self.assertTrue(text, f"{join(path, key)} has no description")
            self.assertNotIn("\n", text, join(path, key))

    def test_every_table_refuses_unknown_keys(self) -> None:
        for path, table in tables(SCHEMA):
            self.assertIs(table.get("additionalProperties"), False, path or "<document>")


# --- keys -------------------------------------------------------------------------------------


class KeyTests(PluginTestCase):
    """The schema has the parser's keys, each at its place, and no other."""

    def test_every_key_tuple_of_the_parser_is_a_table_of_the_schema(self) -> None:
        schema_tables = dict(tables(SCHEMA))
        names = [n for n in vars(_configparse) if re.match(r"^_[A-Z_]+_KEYS$", n)]
        self.assertIn("_SERVER_KEYS", names)
        for name in names:
            self.assertIn(
                name,
                PARSER_TUPLES,
                f"_configparse.{name} is new: describe its table in config_schema._TABLES "
                "(and here), then regenerate",
            )
            for path in PARSER_TUPLES[name]:
                self.assertIn(path, schema_tables, f"{name}: no table {path!r} in the schema")
                self.assertEqual(
                    list(schema_tables[path]["properties"]),
                    list(getattr(_configparse, name)),
                    f"{name} and the schema's {path or 'top level'} differ; run `{REGENERATE}`",
                )

    def test_every_table_has_exactly_the_keys_the_parser_knows(self) -> None:
        for path, table in tables(SCHEMA):
            data = config_at(path, {"zz_unknown": 1})
            where = re.escape(join(dotted(path), "zz_unknown"))
            found = [
                m.group(1)
                for e in parser_errors(data)
                for m in [re.match(rf"^{where}: unknown key.*\(known keys: (.*)\)$", e)]
                if m
            ]
            self.assertEqual(len(found), 1, f"{path}: the parser did not refuse an unknown key")
            self.assertEqual(list(table["properties"]), found[0].split(", "), path)
            self.assertFalse(VALIDATOR.is_valid(data), path)


# --- values -----------------------------------------------------------------------------------

INTEGERS = [-1, 0, 1, 2, 99, 100, 599, 600, 65535, 65536]
NUMBERS = [-1, 0, 0.25, 1, 1.5, 100]


def wrong_values(prop: dict[str, Any]) -> list[Any]:
    """Values of another TOML type than the key's (a float for an integer only if fractional:
    JSON Schema counts 1.0 as an integer)."""
    kind = prop.get("type")
    if kind == "array":
        item = prop["items"].get("type")
        inner = ["x"] if item in ("integer", "number", "object") else [1]
        return ["x", 1, {"a": 1}, inner]
    return {
        "string": [1, True, ["x"], {"a": "b"}],
        "integer": ["1", True, 1.5, [1]],
        "number": ["1", True, [1.0]],
        "boolean": ["true", 1, [True]],
        "object": [5, "x", [{}]],
    }[kind]


class ValueTests(PluginTestCase):
    """Parser and schema agree on the values of every key."""

    def disagreements(self, cases: list[tuple[str, str, Any]]) -> list[str]:
        found = []
        for path, key, value in cases:
            data = probe(path, key, value)
            errors, schema_ok = parser_errors(data), VALIDATOR.is_valid(data)
            if (not errors) != schema_ok:
                found.append(
                    f"{join(path, key)} = {value!r}: parser "
                    f"{errors or 'accepts'}, schema {'accepts' if schema_ok else 'refuses'}"
                )
        return found

    def test_the_probes_start_from_valid_configs(self) -> None:
        for path, _ in tables(SCHEMA):
            data = config_at(path)
            self.assertEqual(parser_errors(data), [], path)
            self.assertEqual(schema_errors(data), [], path)

    def test_values_of_another_type_are_refused_by_both(self) -> None:
        problems = []
        for path, key, prop in keys(SCHEMA):
            for value in wrong_values(prop):
                data = probe(path, key, value)
                errors = parser_errors(data)
                named = [e for e in errors if e.startswith(join(dotted(path), key))]
                if not named or VALIDATOR.is_valid(data):
                    problems.append(f"{join(path, key)} = {value!r}: parser {errors}")
        self.assertEqual(problems, [])

    def test_bounds_of_numbers_agree(self) -> None:
        cases = []
        for path, key, prop in keys(SCHEMA):
            kind = prop.get("type")
            item = prop.get("items", {}).get("type") if kind == "array" else None
            if kind == "integer":
                cases += [(path, key, v) for v in INTEGERS]
            elif kind == "number":
                cases += [(path, key, v) for v in NUMBERS]
            elif item == "integer":
                cases += [(path, key, [v]) for v in INTEGERS]
        self.assertGreater(len(cases), 200)
        self.assertEqual(self.disagreements(cases), [])

    def test_choices_are_the_parsers(self) -> None:
        cases = []
        for path, key, prop in keys(SCHEMA):
            as_list = prop.get("type") == "array"
            strings = prop["items"] if as_list else prop
            if strings.get("type") != "string":
                continue
            bogus = ["zz-bogus"] if as_list else "zz-bogus"
            errors = parser_errors(probe(path, key, bogus))
            listed = [
                m.group(1)
                for e in errors
                for m in [re.search(r"is not one of (.*)$", e)]
                if m and e.startswith(join(dotted(path), key))
            ]
            choices = enum_of(strings)
            self.assertEqual(
                choices,
                listed[0].split(", ") if listed else None,
                f"{join(path, key)}: the parser's choices are not the schema's enum",
            )
            for choice in choices or ():
                cases.append((path, key, [choice] if as_list else choice))
        self.assertGreater(len(cases), 30)
        self.assertEqual(self.disagreements(cases), [])

    def test_resource_values_agree(self) -> None:
        # The form only: whether the module imports and names an IResource is the parser's.
        good = [RESOURCE, "twisted.web.resource:Resource", "twisted.web:resource.Resource"]
        bad = ["notFound", "twisted.web.pages", ":notFound", "twisted.web.pages:"]
        bad += ["twisted.web.pages:not:Found", "twisted.web..pages:notFound"]
        bad += ["twisted.web.pages: notFound", "1twisted:notFound", "twisted:1notFound"]
        cases = [("routes[]", "resource", value) for value in good + bad]
        self.assertEqual(self.disagreements(cases), [])
        for value in good:
            self.assertEqual(parser_errors(probe("routes[]", "resource", value)), [], value)

    def test_defaults_are_what_the_parser_uses(self) -> None:
        # The one default that depends on another key: requests_per_second given alone makes
        # the burst one second's worth, so burst_size is pinned to its own default there.
        burst = SCHEMA["properties"]["rate_limiting"]["properties"]["burst_size"]["default"]
        pinned = {"rate_limiting.requests_per_second": {"burst_size": burst}}
        checked = 0
        for path, key, prop in keys(SCHEMA):
            if "default" not in prop:
                continue
            base = pinned.get(join(path, key), {})
            explicit = config_at(path, {**base, key: prop["default"]})
            self.assertEqual(parser_errors(explicit), [], f"{join(path, key)}: default refused")
            self.assertEqual(
                GatewayConfig.from_dict(explicit),
                GatewayConfig.from_dict(config_at(path, base)),
                f"{join(path, key)}: the parser's default is not {prop['default']!r}",
            )
            checked += 1
        self.assertGreater(checked, 60)

    def test_required_keys_are_the_parsers(self) -> None:
        checked = 0
        for path, table in tables(SCHEMA):
            required = table.get("required", [])
            if not required:
                continue
            # The table with its required keys only (and the first of the keys it needs one of)
            # is valid: nothing else is required...
            only = config_at(path)
            node = table_of(only, path)
            kept = set(required) | set(alternatives(table)[:1])
            for key in set(node) - kept:
                del node[key]
            self.assertEqual(parser_errors(only), [], path)
            self.assertEqual(schema_errors(only), [], path)
            # ...and without any one of them both refuse it.
            for key in required:
                without = copy.deepcopy(only)
                del table_of(without, path)[key]
                self.assertNotEqual(parser_errors(without), [], join(path, key))
                self.assertFalse(VALIDATOR.is_valid(without), join(path, key))
                checked += 1
        self.assertGreaterEqual(checked, 8)

    def test_keys_of_which_one_is_required_are_the_parsers(self) -> None:
        # A value of each, valid on its own.
        values = {"routes[].upstream": {"urls": [UPSTREAM]}, "routes[].resource": RESOURCE}
        checked = 0
        for path, table in tables(SCHEMA):
            keys_ = alternatives(table)
            if keys_:
                none = config_at(path)
                for key in keys_:
                    table_of(none, path).pop(key, None)
                self.assertNotEqual(parser_errors(none), [], f"{path}: none of {keys_}")
                self.assertFalse(VALIDATOR.is_valid(none), f"{path}: none of {keys_}")
                for key in keys_:
                    one = copy.deepcopy(none)
                    table_of(one, path)[key] = copy.deepcopy(values[join(path, key)])
                    self.assertEqual(parser_errors(one), [], join(path, key))
                    self.assertEqual(schema_errors(one), [], join(path, key))
                every = copy.deepcopy(none)
                for key in keys_:
                    table_of(every, path)[key] = copy.deepcopy(values[join(path, key)])
                self.assertNotEqual(parser_errors(every), [], f"{path}: all of {keys_}")
                self.assertFalse(VALIDATOR.is_valid(every), f"{path}: all of {keys_}")
                checked += 1
        self.assertGreaterEqual(checked, 1)

    def test_environment_references_are_accepted(self) -> None:
        if not hasattr(_configparse.Parser, "substitute_env"):
            raise SkipTest("the parser does not substitute ${env.NAME} references")
        environ = {**os.environ, "AVX_T_STRATEGY": "random", "AVX_T_DIGEST": DIGEST}
        self.patch(os, "environ", environ)
        data = config_at("admin", {"token_sha256": "${env.AVX_T_DIGEST}"})
        data["routes"][0]["upstream"]["strategy"] = "${env.AVX_T_STRATEGY}"
        data["rate_limiting"] = {"redis_url": "${env.AVX_T_REDIS:-redis://127.0.0.1:6379/0}"}
        self.assertEqual(parser_errors(data), [])
        self.assertEqual(schema_errors(data), [])


# --- whole configs ----------------------------------------------------------------------------

ROUTE = '[[routes]]\npath = "/api/*"\nupstream = { urls = ["http://127.0.0.1:9001"] }\n'

#: Configs the parser accepts, in the forms tests/unit/test_config.py checks.
VALID: dict[str, dict[str, Any]] = {
    "port 0": {**BASE, "server": {"port": 0}},
    "fractional requests_per_second": {**BASE, "rate_limiting": {"requests_per_second": 0.5}},
    "integer requests_per_second": {**BASE, "rate_limiting": {"requests_per_second": 10}},
    "every strategy": {
        "routes": [
            {"path": f"/{s}/*", "upstream": {"urls": [UPSTREAM], "strategy": s}}
            for s in ("round_robin", "random", "least_connections")
        ]
    },
    "weighted": {
        "routes": [
            {
                "path": "/*",
                "upstream": {
                    "urls": [UPSTREAM, "http://127.0.0.1:9002"],
                    "strategy": "weighted",
                    "weights": [3, 1],
                },
            }
        ]
    },
    "empty tables": {
        **BASE,
        **{t: {} for t in ("server", "middleware", "rate_limiting", "cors", "metrics")},
        **{t: {} for t in ("health", "logging")},
    },
    "route with every override": {
        **BASE,
        "routes": [
            {
                "name": "users",
                "path": "/users/{id}/orders",
                "host": "*.example.com",
                "strip_path": True,
                "methods": ["get", "POST"],
                "timeout_ms": 5000,
                "max_body_bytes": 0,
                "retries": 2,
                "auth": ["jwt", "api_key"],
                "scopes": ["users:read"],
                "cors": False,
                "websocket": False,
                "websocket_idle_timeout_ms": 1000,
                "rate_limit": {"requests_per_second": 2.5},
                "upstream": {
                    "urls": ["https://svc:8443/v2"],
                    "health_check": {},
                    "circuit_breaker": {"failure_threshold": 1},
                },
            }
        ],
    },
    "public-key jwt": {
        "routes": BASE["routes"],
        "auth": {
            "jwt": {
                "algorithms": ["RS256", "ES256"],
                "jwks_url": "https://idp.example.com/jwks.json",
                "forward_claims": {"sub": "X-User-Id", "email": "X-User-Email"},
            },
            "api_key": {"query_param": "api_key", "keys": [{"name": "ci", "sha256": DIGEST}]},
        },
    },
    "cors with credentials": {
        **BASE,
        "cors": {"allowed_origins": ["https://app.example.com"], "allow_credentials": True},
    },
    "listeners and proxies": {
        **BASE,
        "server": {
            "listen": ["tcp:8080:interface=127.0.0.1", "unix:/tmp/avx-schema.sock"],
            "trusted_proxies": ["10.0.0.0/8", "::1"],
            "server_header": "avx",
        },
    },
    "admin": {**BASE, "admin": {"token_sha256": DIGEST.upper()}},
    "text logs at debug": {**BASE, "logging": {"format": "text", "level": "debug"}},
    "empty tracing table": {**BASE, "tracing": {}},
    "tracing": {
        **BASE,
        "tracing": {
            "exporter": "console",
            "endpoint": "https://otel.example.com:4318/v1/traces",
            "service_name": "edge",
            "sample_ratio": 0.25,
            "response_header": "X-Trace-Id",
        },
    },
    "global plugin": {
        **BASE,
        "plugins": {"global": [{"name": PLUGIN, "config": {"greeting": "hi"}}]},
    },
    "route plugin": {
        **BASE,
        "plugins": {"global": []},
        "routes": [
            {"path": "/api/*", "upstream": {"urls": [UPSTREAM]}, "plugins": [{"name": PLUGIN}]}
        ],
    },
    "resource route": {
        "routes": [
            {"path": "/api/*", "upstream": {"urls": [UPSTREAM]}},
            {
                "name": "missing",
                "path": "/gone/*",
                "resource": RESOURCE,
                "plugins": [{"name": PLUGIN, "config": {}}],
            },
        ]
    },
}

#: Configs the parser refuses for a reason the schema can express.
REFUSED: dict[str, str] = {
    "unknown top-level table": "[telemetry]\nexporter = 'otlp'\n" + ROUTE,
    "unknown server key": "[server]\nprot = 8080\n" + ROUTE,
    "unknown route key": ROUTE + "stirp_path = true\n",
    "unknown upstream key": ROUTE.replace("] }", '], protocol = "h2" }'),
    "unknown health check key": ROUTE.replace("] }", '], health_check = { kind = "http" } }'),
    "rate_limit backend per route": ROUTE + 'rate_limit = { backend = "redis" }\n',
    "unknown jwt key": ROUTE + '[auth.jwt]\nsecret = "s"\noidc_issuer = "https://idp/"\n',
    "unknown api key field": ROUTE + f'[auth.api_key]\nkeys = [{{ name = "a", sha256 = "{DIGEST}", '
    'note = "x" }]\n',
    "string for integer": '[server]\nport = "8080"\n' + ROUTE,
    "datetime for integer": "[server]\nport = 1979-05-27\n" + ROUTE,
    "boolean for integer": "[rate_limiting]\nburst_size = true\n" + ROUTE,
    "string for number": '[rate_limiting]\nrequests_per_second = "10"\n' + ROUTE,
    "infinity for number": "[rate_limiting]\nrequests_per_second = -inf\n" + ROUTE,
    "string for boolean": '[server]\npreserve_host = "yes"\n' + ROUTE,
    "integer for string": "[logging]\nformat = 1\n" + ROUTE,
    "string for a list": ROUTE + 'methods = "GET"\n',
    "mixed list": ROUTE + 'auth = ["jwt", 1]\n',
    "value for a table": "server = 5\n" + ROUTE,
    "table for routes": '[routes]\npath = "/x"\n',
    "no routes": "[server]\nport = 1\n",
    "route without path": '[[routes]]\nupstream = { urls = ["http://a:1"] }\n',
    "route without upstream": '[[routes]]\npath = "/x"\n',
    "upstream without urls": '[[routes]]\npath = "/x"\nupstream = { strategy = "random" }\n',
    "empty urls": '[[routes]]\npath = "/x"\nupstream = { urls = [] }\n',
    "ftp url": '[[routes]]\npath = "/x"\nupstream = { urls = ["ftp://a"] }\n',
    "path without slash": '[[routes]]\npath = "x"\nupstream = { urls = ["http://a:1"] }\n',
    "empty methods": ROUTE + "methods = []\n",
    "bad strategy": ROUTE.replace("] }", '], strategy = "round-robin" }'),
    "weighted without weights": ROUTE.replace("] }", '], strategy = "weighted" }'),
    "weights without weighted": ROUTE.replace("] }", "], weights = [1] }"),
    "weight 0": ROUTE.replace("] }", '], strategy = "weighted", weights = [0] }'),
    "status 99": ROUTE.replace("] }", "], health_check = { expected_status = [99] } }"),
    "bad health check path": ROUTE.replace("] }", '], health_check = { path = "up" } }'),
    "breaker threshold 0": ROUTE.replace("] }", "], circuit_breaker = { failure_threshold = 0 } }"),
    "bad rate limit key": '[rate_limiting]\nkey = "user"\n' + ROUTE,
    "bad backend": '[rate_limiting]\nbackend = "disk"\n' + ROUTE,
    "bad on_backend_error": '[rate_limiting]\non_backend_error = "retry"\n' + ROUTE,
    "bad redis url": '[rate_limiting]\nredis_url = "http://redis"\n' + ROUTE,
    "requests_per_second 0": "[rate_limiting]\nrequests_per_second = 0\n" + ROUTE,
    "burst 0": "[rate_limiting]\nburst_size = 0\n" + ROUTE,
    "port above 65535": "[server]\nport = 70000\n" + ROUTE,
    "workers 0": "[server]\nworkers = 0\n" + ROUTE,
    "timeout 0": "[server]\ntimeout_ms = 0\n" + ROUTE,
    "empty listen": "[server]\nlisten = []\n" + ROUTE,
    "empty host": '[server]\nhost = ""\n' + ROUTE,
    "server header with a newline": '[server]\nserver_header = "a\\nb"\n' + ROUTE,
    "negative retries": ROUTE + "retries = -1\n",
    "negative cors max age": "[cors]\nmax_age_s = -5\n" + ROUTE,
    "star origin with credentials": '[cors]\nallowed_origins = ["*"]\nallow_credentials = true\n'
    + ROUTE,
    "origin with a path": '[cors]\nallowed_origins = ["https://a.example/x"]\n' + ROUTE,
    "unknown auth method": ROUTE + 'auth = ["basic"]\n',
    "jwt route without [auth.jwt]": ROUTE + 'auth = ["jwt"]\n',
    "api_key route without [auth.api_key]": ROUTE + 'auth = ["api_key"]\n',
    "scopes without jwt": ROUTE + 'scopes = ["a"]\n[auth.jwt]\nsecret = "s"\n',
    "algorithm none": ROUTE + '[auth.jwt]\nalgorithms = ["none"]\nsecret = "s"\n',
    "no algorithms": ROUTE + '[auth.jwt]\nalgorithms = []\nsecret = "s"\n',
    "mixed algorithms": ROUTE
    + '[auth.jwt]\nalgorithms = ["HS256", "RS256"]\nsecret = "s"\njwks_url = "https://i/j"\n',
    "hmac without a secret": ROUTE + "[auth.jwt]\nleeway_s = 1\n",
    "public key without a key": ROUTE + '[auth.jwt]\nalgorithms = ["RS256"]\n',
    "forwarded claim to a bad header": ROUTE
    + '[auth.jwt]\nsecret = "s"\nforward_claims = { sub = "X User" }\n',
    "api key without sha256": ROUTE + '[auth.api_key]\nkeys = [{ name = "a" }]\n',
    "api key with a bad digest": ROUTE + '[auth.api_key]\nkeys = [{ name = "a", sha256 = "ab" }]\n',
    "bad api key header": ROUTE + '[auth.api_key]\nheader = "X Key"\n',
    "bad metrics path": '[metrics]\npath = "metrics"\n' + ROUTE,
    "bad log level": '[logging]\nlevel = "verbose"\n' + ROUTE,
    "bad log format": '[logging]\nformat = "xml"\n' + ROUTE,
    "admin without a token": '[admin]\nlisten = "tcp:9901"\n' + ROUTE,
    "admin token not a digest": '[admin]\ntoken_sha256 = "secret"\n' + ROUTE,
    "unknown tracing key": '[tracing]\nprotocol = "grpc"\n' + ROUTE,
    "tracing sample_ratio 2": "[tracing]\nsample_ratio = 2\n" + ROUTE,
    "negative tracing sample_ratio": "[tracing]\nsample_ratio = -0.5\n" + ROUTE,
    "bad tracing exporter": '[tracing]\nexporter = "jaeger"\n' + ROUTE,
    "tracing endpoint not http": '[tracing]\nendpoint = "grpc://otel:4317"\n' + ROUTE,
    "empty service name": '[tracing]\nservice_name = ""\n' + ROUTE,
    "bad trace response header": '[tracing]\nresponse_header = "X Trace"\n' + ROUTE,
    "tracing not a table": 'tracing = "on"\n' + ROUTE,
    "unknown [plugins] key": f'[plugins]\nroute = [{{ name = "{PLUGIN}" }}]\n' + ROUTE,
    "global plugins not a list": f'[plugins]\nglobal = {{ name = "{PLUGIN}" }}\n' + ROUTE,
    "global plugin without name": "[plugins]\nglobal = [{ config = {} }]\n" + ROUTE,
    "global plugin with an empty name": '[plugins]\nglobal = [{ name = "" }]\n' + ROUTE,
    "route plugin without name": ROUTE + 'plugins = [{ config = { greeting = "hi" } }]\n',
    "plugin config not a table": ROUTE + f'plugins = [{{ name = "{PLUGIN}", config = "x" }}]\n',
    "unknown plugin entry key": ROUTE + f'plugins = [{{ name = "{PLUGIN}", settings = {{}} }}]\n',
    "route with resource and upstream": ROUTE + f'resource = "{RESOURCE}"\n',
    "resource not module:attribute": '[[routes]]\npath = "/x"\nresource = "NoResource"\n',
    "resource not a string": '[[routes]]\npath = "/x"\nresource = 1\n',
}

#: Configs the parser refuses for a reason the schema cannot express (it accepts them).
LEFT_TO_THE_PARSER: dict[str, str] = {
    "plugin not installed": ROUTE + 'plugins = [{ name = "avx-schema-nowhere" }]\n',
    "key the plugin does not read": ROUTE
    + f'plugins = [{{ name = "{PLUGIN}", config = {{ a = 1 }} }}]\n',
    "plugin twice on a route": ROUTE
    + f'plugins = [{{ name = "{PLUGIN}" }}, {{ name = "{PLUGIN}" }}]\n',
    "global plugin again on a route": f'[plugins]\nglobal = [{{ name = "{PLUGIN}" }}]\n'
    + ROUTE
    + f'plugins = [{{ name = "{PLUGIN}" }}]\n',
    "resource that does not import": '[[routes]]\npath = "/x"\nresource = "avx_schema_nowhere:r"\n',
    "resource that is no IResource": '[[routes]]\npath = "/x"\nresource = "os.path:sep"\n',
}


class WholeConfigTests(PluginTestCase):
    """Shipped and tested configs validate; configs the parser refuses are refused."""

    def assertValid(self, data: dict[str, Any], where: str) -> None:
        self.assertEqual(schema_errors(data), [], where)

    def test_shipped_configs_validate(self) -> None:
        shipped = shipped_configs()
        self.assertGreaterEqual(len(shipped), 3, sorted(shipped))
        for name, text in sorted(shipped.items()):
            data = tomllib.loads(text)
            self.assertIn("routes", data, name)
            self.assertValid(data, name)

    def test_complete_example_of_the_configuration_reference_validates(self) -> None:
        text = (REPO / "docs/configuration.md").read_text()
        data = tomllib.loads(markdown_toml_block(text, "## A complete example"))
        self.assertIn("admin", data)
        self.assertValid(data, "docs/configuration.md")

    def test_toml_configs_the_config_tests_load_validate(self) -> None:
        directory = temp_dir(self)
        accepted = []
        for text in module_toml_strings(REPO / "tests/unit/test_config.py"):
            text = text.replace("{DIR}", directory).replace("{DIGEST}", DIGEST)
            data = tomllib.loads(text)
            provide_files(data, directory)
            if not parser_errors(data, base_dir=directory):
                accepted.append(data)
                self.assertValid(data, text)
        self.assertGreaterEqual(len(accepted), 2)
        self.assertTrue(any("admin" in data for data in accepted), "the contract was not found")

    def test_representative_valid_configs_validate(self) -> None:
        for name, data in VALID.items():
            self.assertEqual(parser_errors(data), [], name)
            self.assertValid(data, name)

    def test_configs_the_parser_refuses_are_refused(self) -> None:
        problems = []
        for name, text in REFUSED.items():
            data = tomllib.loads(text)
            if not parser_errors(data):
                problems.append(f"{name}: the parser accepts it")
            elif VALIDATOR.is_valid(data):
                problems.append(f"{name}: the schema accepts it ({parser_errors(data)})")
        self.assertEqual(problems, [])

    def test_what_the_schema_cannot_say_is_left_to_the_parser(self) -> None:
        # If the schema learns to refuse one of these, move it to REFUSED.
        for name, text in LEFT_TO_THE_PARSER.items():
            data = tomllib.loads(text)
            self.assertNotEqual(parser_errors(data), [], f"{name}: the parser accepts it")
            self.assertEqual(schema_errors(data), [], name)
