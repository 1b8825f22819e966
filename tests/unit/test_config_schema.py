"""Tests for avx_twisted.config_schema: the committed JSON Schema is current, valid, and agrees
with the parser (which keys, types, bounds, choices, defaults and required keys).

Most tests probe the parser itself: they put one value at one key of an otherwise valid config
and check that the parser and the schema agree on it, for every key the schema has. A key added
to the parser therefore fails here until the schema (and docs/gateway.schema.json) follows.
"""

from __future__ import annotations

import ast
import atexit
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
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted import _configparse, plugins
from avx_twisted.config import ConfigError, GatewayConfig
from avx_twisted.config_schema import DRAFT, build_schema, dumps, main
from tests.support.pki import Authority

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "docs" / "gateway.schema.json"
REGENERATE = "python -m avx_twisted.config_schema > docs/gateway.schema.json"
#: A certificate and its key in one PEM file, shipped with Twisted's own tests.
SERVER_PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
HTTPS_UPSTREAM = "https://127.0.0.1:9443"
INTROSPECTION = "https://idp.example.com/oauth2/introspect"
DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")
UPSTREAM = "http://127.0.0.1:9001"
#: A twisted.web resource for ``routes[].resource`` (load_resource calls a factory taking no
#: arguments: this one answers 404).
RESOURCE = "twisted.web.pages:notFound"
#: The name the probe plugin is registered under while a test runs.
PLUGIN = "avx-schema-probe"


def _mint() -> tuple[str, str, str]:
    """A server certificate, its key and the CA that signed it (EC keys: quick to load), for
    the keys of TLS files the parser reads; removed when the test process exits."""
    directory = Path(tempfile.mkdtemp(prefix="avx-schema-pki-"))
    atexit.register(shutil.rmtree, directory, True)
    ca = Authority(directory, "avx schema CA")
    issued = ca.issue("server", "localhost", dns=["localhost"])
    return str(issued.cert), str(issued.key), str(ca.path)


CERT, KEY, CA = _mint()


def _json_schema() -> str:
    """A JSON Schema file for [routes.validate]'s keys (the parser compiles it)."""
    directory = Path(tempfile.mkdtemp(prefix="avx-schema-json-"))
    atexit.register(shutil.rmtree, directory, True)
    path = directory / "body.json"
    path.write_text('{"type": "object"}')
    return str(path)


JSON_SCHEMA = _json_schema()

SCHEMA = build_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

#: The tables each key tuple of the parser describes, as schema paths ("[]": array items).
PARSER_TUPLES = {
    "_TOP_KEYS": ("",),
    "_SERVER_KEYS": ("server",),
    "_LISTENER_KEYS": ("server.listeners[]",),
    "_LISTENER_TLS_KEYS": ("server.listeners[].tls",),
    "_SNI_CERT_KEYS": ("server.listeners[].tls.certificates[]",),
    "_ROUTE_KEYS": ("routes[]",),
    "_UPSTREAM_KEYS": ("routes[].upstream",),
    "_HEALTH_CHECK_KEYS": ("routes[].upstream.health_check",),
    "_BREAKER_KEYS": ("routes[].upstream.circuit_breaker",),
    "_ROUTE_RATE_KEYS": ("routes[].rate_limit",),
    "_ROUTE_CACHE_KEYS": ("routes[].cache",),
    "_CACHE_KEYS": ("cache",),
    "_COMPRESSION_KEYS": ("routes[].compression",),
    "_REQUEST_TRANSFORM_KEYS": ("routes[].request",),
    "_RESPONSE_TRANSFORM_KEYS": ("routes[].response",),
    "_REWRITE_KEYS": ("routes[].request.rewrite_path",),
    "_HEADER_RULE_KEYS": (),
    "_JSON_RULE_KEYS": (),
    "_GRAPHQL_KEYS": ("routes[].graphql",),
    "_VALIDATE_KEYS": ("routes[].validate",),
    "_RATE_KEYS": ("rate_limiting",),
    "_CORS_KEYS": ("cors",),
    "_JWT_KEYS": ("auth.jwt",),
    "_API_KEY_KEYS": ("auth.api_key",),
    "_MTLS_KEYS": ("auth.mtls",),
    "_MTLS_POLICY_KEYS": ("routes[].mtls",),
    "_OAUTH2_KEYS": ("auth.oauth2",),
    "_METRICS_KEYS": ("metrics",),
    "_HEALTH_KEYS": ("health",),
    "_LOGGING_KEYS": ("logging",),
    "_TRACING_KEYS": ("tracing",),
    "_PLUGINS_KEYS": ("plugins",),
    "_PLUGIN_REF_KEYS": ("routes[].plugins[]", "plugins.global[]"),
}

#: A valid config every probe starts from: one route, and every authenticator configured so
#: that a route may name any.
BASE: dict[str, Any] = {
    "routes": [{"path": "/api/*", "upstream": {"urls": [UPSTREAM]}}],
    "auth": {
        "jwt": {"secret": "s"},
        "api_key": {},
        "mtls": {},
        "oauth2": {"introspection_url": INTROSPECTION, "client_id": "avx", "client_secret": "s"},
    },
}
#: What a table needs, besides the key under test, to be valid when it is added to BASE.
CONTEXT: dict[str, dict[str, Any]] = {
    "server.listeners[]": {"endpoint": "tcp:0:interface=127.0.0.1"},
    "server.listeners[].tls": {"cert_file": CERT, "key_file": KEY},
    "server.listeners[].tls.certificates[]": {
        "server_name": "api.example.com",
        "cert_file": CERT,
        "key_file": KEY,
    },
    "auth.api_key.keys[]": {"name": "ci", "sha256": DIGEST},
    "admin": {"token_sha256": DIGEST},
    "routes[].plugins[]": {"name": PLUGIN},
    "plugins.global[]": {"name": PLUGIN},
    "routes[].request.rewrite_path": {"pattern": "^/v1/(.*)$", "replacement": "/api/\\1"},
    "routes[].validate": {"request_schema": JSON_SCHEMA},
}
#: Sibling keys a key needs to be valid at all (of a table: also when its probes add it).
NEEDS: dict[str, dict[str, Any]] = {
    "routes[].upstream.weights": {"strategy": "weighted"},
    "routes[].scopes": {"auth": ["jwt"]},
    "routes[].mtls": {"auth": ["mtls"]},
    "routes[].upstream.client_cert_file": {"client_key_file": KEY, "urls": [HTTPS_UPSTREAM]},
    "routes[].upstream.client_key_file": {"client_cert_file": CERT, "urls": [HTTPS_UPSTREAM]},
    "routes[].upstream.server_name": {"urls": [HTTPS_UPSTREAM]},
    "server.listeners[].tls.client_auth": {"client_ca_file": CA},
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
    """BASE with the table at ``path`` (and its CONTEXT, and the siblings it NEEDS) present,
    holding ``values``."""
    data = copy.deepcopy(BASE)
    node = data
    here = ""
    for part in path.split(".") if path else ():
        here = join(here, part)
        for key, value in NEEDS.get(here, {}).items():
            node.setdefault(key, copy.deepcopy(value))
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


#: A line holding only a template action ``{{- if COND }}``, ``{{- else }}`` or ``{{- end }}``.
_HELM_ACTION = re.compile(r"^\s*\{\{-?\s*(if|else|end)\b\s*(.*?)\s*-?\}\}\s*$")
_HELM_VALUE = r"\.Values(?:\.\w+)+"


def helm_values_config(path: Path, every_if: bool = False) -> str | None:
    """The chart's gateway config (``config`` in values.yaml) as ``tpl`` renders it with the
    chart's values, for the forms it uses: ``{{ .Values.x.y }}``, ``{{ .Release.Namespace }}``
    and whole lines of ``{{- if .Values.x }}`` / ``{{- if ne|eq .Values.x "s" }}``, ``{{- else
    }}``, ``{{- end }}``. ``every_if``: as if every ``if .Values.x`` toggle were on."""
    import yaml

    values = yaml.safe_load(path.read_text())
    if not isinstance(values, dict) or not isinstance(values.get("config"), str):
        return None

    def value(expr: str) -> Any:
        if expr == ".Release.Namespace":
            return "default"
        node: Any = values
        for part in expr.split(".")[2:]:
            node = node[part]
        return node

    def text_of(node: Any) -> str:
        return json.dumps(node) if isinstance(node, bool) else str(node)  # Go prints true

    def holds(condition: str) -> bool:
        if re.fullmatch(_HELM_VALUE, condition):
            return every_if or bool(value(condition))
        compare = re.fullmatch(rf'(ne|eq) ({_HELM_VALUE}) "([^"]*)"', condition)
        assert compare, f"{path}: config uses {{{{ if {condition} }}}}, which this test cannot read"
        equal = text_of(value(compare.group(2))) == compare.group(3)
        return equal if compare.group(1) == "eq" else not equal

    kept: list[str] = []
    branches: list[bool] = []  # whether each open if's current branch is rendered
    for line in values["config"].splitlines():
        action = _HELM_ACTION.match(line)
        if action is None:
            if all(branches):
                kept.append(line)
        elif action.group(1) == "if":
            branches.append(holds(action.group(2)))
        elif action.group(1) == "else":
            branches[-1] = not branches[-1]
        else:
            branches.pop()
    assert not branches, f"{path}: config has an if without its end"
    pattern = rf"\{{\{{\s*({_HELM_VALUE}|\.Release\.Namespace)\s*\}}\}}"
    text = re.sub(pattern, lambda m: text_of(value(m.group(1))), "\n".join(kept) + "\n")
    assert "{{" not in text, f"{path}: config uses template forms this test cannot fill in"
    return text


def shipped_configs() -> dict[str, str]:
    """Every gateway config the repository ships, by file: TOML files, configs embedded in
    Kubernetes manifests (templates aside) and the Helm chart's default, also with each of its
    optional parts on."""
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
        for every_if in (False, True):
            toml = helm_values_config(path, every_if)
            if toml is not None:
                found[str(path.relative_to(REPO)) + (" (every if on)" if every_if else "")] = toml
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

    def test_mtls_subjects_agree(self) -> None:
        # RFC 4514 as tls.normalise_subject reads it: escapes, "+" (multi-valued RDNs), blank
        # pieces and spaces around names.
        good = ["CN=billing,O=Acme", "cn = billing , o = Acme", "CN=a+OU=b", "CN=a\\,b,O=c"]
        good += ["CN=a,,O=b", "CN=", "CN=a=b", "CN=a\\", "CN=a,\\", "C\\=N=x", "\\=x", "1.2.3=x"]
        good += ["CN=a\\+b", "  CN=a  ", "CN=a,+O=b", "CN=Ba\u015fmak\u00e7\u0131"]
        bad = ["", " ", ",", "+", "billing", "CN=a,billing", "=a", " =a", "CN=a,=b"]
        bad += ["CN=a+b", "CN\\,a", "CN=a, ,x"]
        cases = [
            (path, "allowed_subjects", [value])
            for path in ("auth.mtls", "routes[].mtls")
            for value in good + bad
        ]
        self.assertEqual(self.disagreements(cases), [])
        for value in good:
            self.assertEqual(parser_errors(probe("auth.mtls", "allowed_subjects", [value])), [])

    def test_server_names_agree(self) -> None:
        good = ["api.example.com", "API.Example.COM", "a", "a-b.c", "example.com.", "1.2.3.4"]
        good += ["x" * 63 + ".com", ".".join(["a" * 63] * 3) + "." + "b" * 61]
        bad = ["", ".", "-a.com", "a-.com", "a..com", "a_b.com", "a b", "*", "a.*.com"]
        bad += ["x" * 64 + ".com", ".".join(["a" * 63] * 4)]
        sni = ["*.example.com", "*.a", "*." + ".".join(["a" * 63] * 3) + "." + "b" * 61]
        bad += ["*." + ".".join(["a" * 63] * 4)]
        certificates = "server.listeners[].tls.certificates[]"
        cases = [(certificates, "server_name", value) for value in good + bad + sni + ["*."]]
        cases += [("routes[].upstream", "server_name", value) for value in good + bad + sni]
        self.assertEqual(self.disagreements(cases), [])
        for value in good + sni:
            self.assertEqual(parser_errors(probe(certificates, "server_name", value)), [], value)

    def test_introspection_urls_agree(self) -> None:
        good = [INTROSPECTION, "https://idp:8443", "http://127.0.0.1:9000/i", "http://localhost"]
        good += ["http://LocalHost/x", "http://127.9.8.7/", "http://[::1]:9000/", "http://[0::1]/"]
        bad = ["idp.example.com", "ftp://idp/", "https://", "HTTPS://idp/", "http://idp/i"]
        bad += ["http://10.0.0.1/", "http://localhost.example.com/", "http://127.0.0.1.nip.io/"]
        bad += ["http://[::2]/", "http://127.1/", "http://localhost?x=1", "http://localhost#x"]
        cases = [("auth.oauth2", "introspection_url", value) for value in good + bad]
        self.assertEqual(self.disagreements(cases), [])
        for value in good:
            self.assertEqual(parser_errors(probe("auth.oauth2", "introspection_url", value)), [])

    def test_listener_endpoints_agree(self) -> None:
        # Whether a Twisted endpoint string parses is the parser's; which kinds a structured
        # listener refuses (TLS and PROXY have their own keys) the schema says too.
        good = ["tcp:0", "tcp:0:interface=127.0.0.1", "tcp6:0", "unix:/tmp/avx-schema.sock"]
        good += ["systemd:domain=INET:index=0"]
        bad = ["", f"ssl:0:privateKey={SERVER_PEM}", f"SSL:0:privateKey={SERVER_PEM}"]
        bad += ["haproxy:tcp:0", "HAProxy:tcp:0", "haproxy:unix:/tmp/avx-schema.sock"]
        cases = [("server.listeners[]", "endpoint", value) for value in good + bad]
        self.assertEqual(self.disagreements(cases), [])
        for value in good:
            self.assertEqual(parser_errors(probe("server.listeners[]", "endpoint", value)), [])

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
        values = {
            "routes[].upstream": {"urls": [UPSTREAM]},
            "routes[].resource": RESOURCE,
            "auth.oauth2.client_secret": "s",
            "auth.oauth2.client_secret_env": "AVX_T_OAUTH2_SECRET",
        }
        self.patch(os, "environ", {**os.environ, "AVX_T_OAUTH2_SECRET": "from-env"})
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
        environ = {**os.environ, "AVX_T_STRATEGY": "random", "AVX_T_DIGEST": DIGEST}
        self.patch(os, "environ", environ)
        data = config_at("admin", {"token_sha256": "${env.AVX_T_DIGEST}"})
        data["routes"][0]["upstream"]["strategy"] = "${env.AVX_T_STRATEGY}"
        data["rate_limiting"] = {"redis_url": "${env.AVX_T_REDIS:-redis://127.0.0.1:6379/0}"}
        self.assertEqual(parser_errors(data), [])
        self.assertEqual(schema_errors(data), [])
        # The rules across keys see the reference, not its value: an https URL from the
        # environment may carry a client certificate.
        environ["AVX_T_UPSTREAM"] = HTTPS_UPSTREAM
        data = probe("routes[].upstream", "client_cert_file", CERT)
        data["routes"][0]["upstream"]["urls"] = ["${env.AVX_T_UPSTREAM}"]
        self.assertEqual(parser_errors(data), [])
        self.assertEqual(schema_errors(data), [])


# --- whole configs ----------------------------------------------------------------------------

ROUTE = '[[routes]]\npath = "/api/*"\nupstream = { urls = ["http://127.0.0.1:9001"] }\n'
#: A route to an https upstream, its upstream table left open for more keys.
HTTPS_ROUTE = f'[[routes]]\npath = "/api/*"\n[routes.upstream]\nurls = ["{HTTPS_UPSTREAM}"]\n'
CERT_TOML, KEY_TOML, CA_TOML = map(json.dumps, (CERT, KEY, CA))  # as TOML strings
LISTENER = '[[server.listeners]]\nendpoint = "tcp:0"\n'
TLS = LISTENER + f"[server.listeners.tls]\ncert_file = {CERT_TOML}\nkey_file = {KEY_TOML}\n"


def sni_certificate(name: str) -> str:
    """An inline table of ``certificates``: the test certificate for the SNI name ``name``."""
    return f'{{ server_name = "{name}", cert_file = {CERT_TOML}, key_file = {KEY_TOML} }}'


OAUTH2 = f'[auth.oauth2]\nintrospection_url = "{INTROSPECTION}"\nclient_id = "avx"\n'

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
    "tls listeners": {
        **BASE,
        "server": {
            "listen": ["tcp:0:interface=127.0.0.1"],
            "listeners": [
                {"endpoint": "tcp:0", "http2": False, "proxy_protocol": True},
                {
                    "endpoint": "tcp6:0:interface=\\:\\:1",
                    "tls": {
                        "cert_file": CERT,
                        "key_file": KEY,
                        "certificates": [
                            {
                                "server_name": "API.example.com",
                                "cert_file": CERT,
                                "key_file": KEY,
                            },
                            {
                                "server_name": "*.example.com",
                                "cert_file": CERT,
                                "key_file": KEY,
                            },
                        ],
                        "min_version": "TLSv1.3",
                        "client_auth": "optional",
                        "client_ca_file": CA,
                    },
                },
                {"endpoint": "unix:/tmp/avx-schema-tls.sock"},
            ],
        },
    },
    "listeners only": {**BASE, "server": {"listeners": [{"endpoint": "tcp:0"}]}},
    "no listeners": {**BASE, "server": {"listeners": []}},
    "mtls routes": {
        "routes": [
            {
                "path": "/billing/*",
                "auth": ["mtls"],
                "mtls": {
                    "allowed_subjects": ["CN=billing, O=Acme", "cn=a\\,b+OU=x"],
                    "allowed_sans": ["spiffe://acme/ns/prod/sa/billing"],
                },
                "upstream": {"urls": [UPSTREAM]},
            },
            {"path": "/any/*", "auth": ["mtls"], "mtls": {}, "upstream": {"urls": [UPSTREAM]}},
            {"path": "/*", "auth": ["mtls", "api_key"], "upstream": {"urls": [UPSTREAM]}},
        ],
        "auth": {
            "mtls": {"allowed_subjects": ["CN=ops,O=Acme"], "forward_client_cert": True},
            "api_key": {},
        },
        "rate_limiting": {"key": "consumer"},
    },
    "oauth2 route with scopes": {
        "routes": [
            {
                "path": "/api/*",
                "auth": ["oauth2"],
                "scopes": ["users:read"],
                "upstream": {"urls": [UPSTREAM]},
            }
        ],
        "auth": {
            "oauth2": {
                "introspection_url": "http://127.0.0.1:9000/introspect",
                "client_id": "avx",
                "client_secret": "s",
                "client_auth": "post",
                "issuer": "https://idp.example.com/",
                "audience": "avx",
                "forward_claims": {"sub": "X-User-Id", "client_id": "X-Client-Id"},
                "cache_ttl_s": 0,
                "negative_cache_ttl_s": 0,
                "timeout_ms": 500,
                "ca_file": CA,
            }
        },
    },
    "oauth2 to localhost": {
        **BASE,
        "auth": {
            **BASE["auth"],
            "oauth2": {
                "introspection_url": "http://localhost:9000/introspect",
                "client_id": "avx",
                "client_secret": "s",
            },
        },
    },
    "oidc jwt": {
        "routes": [
            {"path": "/api/*", "auth": ["jwt"], "scopes": ["a"], "upstream": {"urls": [UPSTREAM]}}
        ],
        "auth": {"jwt": {"algorithms": ["RS256"], "oidc_issuer": "https://idp.example.com/"}},
    },
    "upstream client certificate": {
        "routes": [
            {
                "path": "/api/*",
                "upstream": {
                    "urls": [UPSTREAM, HTTPS_UPSTREAM],
                    "ca_file": CA,
                    "client_cert_file": CERT,
                    "client_key_file": KEY,
                    "server_name": "Users.Internal",
                },
            }
        ]
    },
    "upstream server name": {
        "routes": [
            {"path": "/api/*", "upstream": {"urls": [HTTPS_UPSTREAM], "server_name": "a.b."}}
        ]
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
    "unknown upstream key": ROUTE.replace("] }", '], protocl = "h2" }'),
    "unknown health check key": ROUTE.replace("] }", '], health_check = { knd = "http" } }'),
    "h2 to an http URL": ROUTE.replace("] }", '], protocol = "h2" }'),
    "grpc over HTTP/1.1": ROUTE + "grpc = true\n",
    "grpc health check over HTTP/1.1": ROUTE.replace(
        "] }", '], health_check = { kind = "grpc" } }'
    ),
    "rate_limit backend per route": ROUTE + 'rate_limit = { backend = "redis" }\n',
    "unknown jwt key": ROUTE + '[auth.jwt]\nsecret = "s"\njwks_uri = "https://idp/"\n',
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
    "listeners a table": '[server.listeners]\nendpoint = "tcp:0"\n' + ROUTE,
    "unknown listener key": LISTENER + "h2c = true\n" + ROUTE,
    "listener without endpoint": "[[server.listeners]]\nproxy_protocol = true\n" + ROUTE,
    "empty listener endpoint": '[[server.listeners]]\nendpoint = ""\n' + ROUTE,
    "http2 limit below one stream": "[server.http2]\nmax_concurrent_streams = 0\n" + ROUTE,
    "unknown http2 key": "[server.http2]\nmax_streams = 10\n" + ROUTE,
    "ssl: listener": '[[server.listeners]]\nendpoint = "ssl:0:privateKey=k.pem"\n' + ROUTE,
    "haproxy: listener": '[[server.listeners]]\nendpoint = "haproxy:tcp:0"\n' + ROUTE,
    "HAProxy: listener": '[[server.listeners]]\nendpoint = "HAProxy:tcp:0"\n' + ROUTE,
    "unknown listener tls key": TLS + 'ciphers = "ALL"\n' + ROUTE,
    "tls without key_file": LISTENER + f"[server.listeners.tls]\ncert_file = {CERT_TOML}\n" + ROUTE,
    "tls without cert_file": LISTENER + f"[server.listeners.tls]\nkey_file = {KEY_TOML}\n" + ROUTE,
    "TLS 1.1": TLS + 'min_version = "TLSv1.1"\n' + ROUTE,
    "bad client_auth": TLS + 'client_auth = "request"\n' + ROUTE,
    "client_auth without client_ca_file": TLS + 'client_auth = "require"\n' + ROUTE,
    "optional client_auth without client_ca_file": TLS + 'client_auth = "optional"\n' + ROUTE,
    "sni certificate without server_name": TLS
    + f"certificates = [{{ cert_file = {CERT_TOML}, key_file = {KEY_TOML} }}]\n"
    + ROUTE,
    "sni certificate without key_file": TLS
    + f'certificates = [{{ server_name = "a.example", cert_file = {CERT_TOML} }}]\n'
    + ROUTE,
    "bad sni name": TLS + f"certificates = [{sni_certificate('-a.example')}]\n" + ROUTE,
    "sni name with a space": TLS + f"certificates = [{sni_certificate('a b')}]\n" + ROUTE,
    "mtls route without [auth.mtls]": ROUTE + 'auth = ["mtls"]\n',
    "route mtls without mtls in auth": ROUTE + 'mtls = { allowed_sans = ["a"] }\n[auth.mtls]\n',
    "route mtls with an unknown key": ROUTE
    + 'auth = ["mtls"]\nmtls = { forward_client_cert = true }\n[auth.mtls]\n',
    "mtls subject without =": ROUTE + '[auth.mtls]\nallowed_subjects = ["billing"]\n',
    "empty mtls subject": ROUTE + '[auth.mtls]\nallowed_subjects = [" , "]\n',
    "mtls subject with a blank attribute": ROUTE + '[auth.mtls]\nallowed_subjects = ["CN=a,=b"]\n',
    "empty mtls san": ROUTE + '[auth.mtls]\nallowed_sans = [""]\n',
    "oauth2 route without [auth.oauth2]": ROUTE + 'auth = ["oauth2"]\n',
    "scopes with mtls only": ROUTE + 'auth = ["mtls"]\nscopes = ["a"]\n[auth.mtls]\n',
    "oauth2 without introspection_url": ROUTE
    + '[auth.oauth2]\nclient_id = "a"\nclient_secret = "s"\n',
    "oauth2 without client_id": ROUTE
    + f'[auth.oauth2]\nintrospection_url = "{INTROSPECTION}"\nclient_secret = "s"\n',
    "oauth2 without a secret": ROUTE + OAUTH2,
    "oauth2 with an empty secret": ROUTE + OAUTH2 + 'client_secret = ""\n',
    "oauth2 with an empty client_id": ROUTE
    + OAUTH2.replace('"avx"', '""')
    + 'client_secret = "s"\n',
    "oauth2 secret and secret_env": ROUTE
    + OAUTH2
    + 'client_secret = "s"\nclient_secret_env = "HOME"\n',
    "oauth2 over plain http": ROUTE
    + OAUTH2.replace("https://", "http://")
    + 'client_secret = "s"\n',
    "oauth2 introspection not a URL": ROUTE
    + OAUTH2.replace(INTROSPECTION, "idp.example.com/introspect")
    + 'client_secret = "s"\n',
    "bad oauth2 client_auth": ROUTE + OAUTH2 + 'client_secret = "s"\nclient_auth = "jwt"\n',
    "negative oauth2 cache ttl": ROUTE + OAUTH2 + 'client_secret = "s"\ncache_ttl_s = -1\n',
    "oauth2 timeout 0": ROUTE + OAUTH2 + 'client_secret = "s"\ntimeout_ms = 0\n',
    "oauth2 claim to a bad header": ROUTE
    + OAUTH2
    + 'client_secret = "s"\nforward_claims = { sub = "X User" }\n',
    "oidc_issuer with jwks_url": ROUTE
    + '[auth.jwt]\nalgorithms = ["RS256"]\noidc_issuer = "https://idp/"\njwks_url = "https://idp/j"\n',
    "oidc_issuer with HS256": ROUTE + '[auth.jwt]\nsecret = "s"\noidc_issuer = "https://idp/"\n',
    "oidc_issuer not a URL": ROUTE + '[auth.jwt]\nalgorithms = ["RS256"]\noidc_issuer = "idp"\n',
    "client_cert_file without client_key_file": HTTPS_ROUTE + f"client_cert_file = {CERT_TOML}\n",
    "client_key_file without client_cert_file": HTTPS_ROUTE + f"client_key_file = {KEY_TOML}\n",
    "client certificate on an http upstream": ROUTE.replace(
        "] }", f"], client_cert_file = {CERT_TOML}, client_key_file = {KEY_TOML} }}"
    ),
    "server_name on an http upstream": ROUTE.replace("] }", '], server_name = "a.example" }'),
    "wildcard upstream server_name": HTTPS_ROUTE + 'server_name = "*.example.com"\n',
    "bad upstream server_name": HTTPS_ROUTE + 'server_name = "a_b.example"\n',
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
    "listener endpoint not a Twisted endpoint": '[[server.listeners]]\nendpoint = "tcp:x"\n'
    + ROUTE,
    "listeners on one port": '[[server.listeners]]\nendpoint = "tcp:18443"\n' * 2 + ROUTE,
    "missing certificate file": LISTENER
    + '[server.listeners.tls]\ncert_file = "/nonexistent/avx.pem"\nkey_file = "/nowhere/avx.pem"\n'
    + ROUTE,
    "a certificate file that is no PEM": LISTENER
    + f"[server.listeners.tls]\ncert_file = {json.dumps(__file__)}\nkey_file = {KEY_TOML}\n"
    + ROUTE,
    "a client CA file that is no PEM": TLS
    + f'client_auth = "require"\nclient_ca_file = {json.dumps(__file__)}\n'
    + ROUTE,
    "two certificates for one SNI name": TLS
    + f"certificates = [{sni_certificate('a.example')}, {sni_certificate('A.example')}]\n"
    + ROUTE,
    "missing upstream client certificate": HTTPS_ROUTE
    + 'client_cert_file = "/nonexistent/c.pem"\nclient_key_file = "/nonexistent/c.pem"\n',
    "oauth2 secret variable not set": ROUTE + OAUTH2 + 'client_secret_env = "AVX_T_NOWHERE"\n',
    "missing oauth2 ca_file": ROUTE + OAUTH2 + 'client_secret = "s"\nca_file = "/nonexistent/ca"\n',
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
