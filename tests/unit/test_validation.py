"""Tests for ``avx_twisted.validation``: schemas, problems, JSON bodies, problem documents."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted._configmodel import ConfigError
from avx_twisted.validation import (
    MAX_DEPTH,
    MAX_PROBLEMS,
    VALIDATION_PROBLEM_TYPE,
    CompiledSchema,
    Problem,
    is_json_content_type,
    load_schema,
    parse_json,
    problem_body,
)

KEY = "routes.validate.request_schema"
SECRET = "hunter2-s3cr3t-value"


class _Files(SynchronousTestCase):
    """A fresh directory per test to write schema files into."""

    def setUp(self) -> None:
        parent = tempfile.mkdtemp(prefix="avx-validation-")
        self.addCleanup(shutil.rmtree, parent)
        self.dir = os.path.join(parent, "schemas")
        os.makedirs(self.dir)

    def write(self, name: str, content: Any) -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def load(self, schema: Any, name: str = "schema.json") -> CompiledSchema:
        return load_schema(self.write(name, schema), KEY)

    def load_error(self, schema: Any, name: str = "schema.json") -> list[str]:
        path = self.write(name, schema)
        with self.assertRaises(ConfigError) as raised:
            load_schema(path, KEY)
        errors = raised.exception.errors
        for line in errors:
            self.assertTrue(line.startswith(f"{KEY}: {path}: "), line)
            self.assertNotIn("\n", line)
        return errors


class DraftTests(_Files):
    """The draft comes from ``$schema``; 2020-12 when there is none."""

    def test_default_is_2020_12(self) -> None:
        compiled = self.load({"prefixItems": [{"type": "integer"}]})
        self.assertEqual(compiled.draft, "draft 2020-12")
        self.assertEqual(compiled.validate([1]), [])
        self.assertEqual([p.keyword for p in compiled.validate(["x"])], ["type"])

    def test_draft_7_by_schema(self) -> None:
        for dialect in (
            "http://json-schema.org/draft-07/schema#",
            "http://json-schema.org/draft-07/schema",
        ):
            compiled = self.load({"$schema": dialect, "items": [{"type": "integer"}]})
            self.assertEqual(compiled.draft, "draft 7")
            # Draft 7's array form of ``items`` is a tuple; prefixItems means nothing there.
            self.assertEqual([p.keyword for p in compiled.validate(["x"])], ["type"])
            self.assertEqual(
                self.load({"$schema": dialect, "prefixItems": [False]}).validate([1]), []
            )

    def test_draft_7_root_ref_and_anchor_id(self) -> None:
        draft7 = "http://json-schema.org/draft-07/schema#"
        self.write("sub/string.json", {"$schema": draft7, "type": "string"})
        compiled = self.load({"$schema": draft7, "$ref": "sub/string.json", "type": "integer"})
        self.assertEqual(compiled.validate("x"), [])  # keywords beside $ref are ignored in draft 7
        self.assertEqual([p.keyword for p in compiled.validate(1)], ["type"])
        compiled = self.load(
            {
                "$schema": draft7,
                "$id": "#root",
                "properties": {"self": {"$ref": "#root"}, "s": {"$ref": "sub/string.json"}},
                "required": ["s"],
            }
        )
        self.assertEqual(compiled.validate({"s": "x", "self": {"s": "y"}}), [])
        self.assertEqual(
            compiled.validate({"s": "x", "self": {}}),
            [Problem("/self", "required", "required property 's' is missing")],
        )

    def test_draft_2019_09_by_schema(self) -> None:
        compiled = self.load(
            {
                "$schema": "https://json-schema.org/draft/2019-09/schema",
                "dependentRequired": {"card": ["cvv"]},
            }
        )
        self.assertEqual(compiled.draft, "draft 2019-09")
        problems = compiled.validate({"card": SECRET})
        self.assertEqual(
            problems,
            [Problem("", "dependentRequired", "property 'cvv' is required when 'card' is present")],
        )

    def test_other_schema_is_an_error(self) -> None:
        [line] = self.load_error({"$schema": "http://json-schema.org/draft-04/schema#"})
        self.assertIn("unsupported $schema 'http://json-schema.org/draft-04/schema#'", line)
        [line] = self.load_error({"$schema": 7})
        self.assertIn("$schema must be a string", line)

    def test_boolean_schemas(self) -> None:
        self.assertEqual(self.load(True).validate({"a": 1}), [])
        self.assertEqual([p.keyword for p in self.load(False).validate(1)], ["false"])


class InvalidSchemaTests(_Files):
    """A schema that is not valid against its metaschema, or not a schema at all, fails load."""

    def test_metaschema_violation(self) -> None:
        [line] = self.load_error({"properties": {"email": {"type": "strin"}}})
        self.assertIn("invalid draft 2020-12 schema at /properties/email/type:", line)

    def test_bad_regex_pattern(self) -> None:
        [line] = self.load_error({"pattern": "(unclosed"})
        self.assertIn("invalid draft 2020-12 schema at /pattern", line)

    def test_draft_7_metaschema(self) -> None:
        [line] = self.load_error(
            {"$schema": "http://json-schema.org/draft-07/schema#", "minLength": -1}
        )
        self.assertIn("invalid draft 7 schema at /minLength", line)

    def test_not_json(self) -> None:
        [line] = self.load_error('{"type": "object",}')
        self.assertIn("not a JSON schema: invalid JSON: ", line)
        self.assertIn("line 1 column", line)

    def test_not_an_object(self) -> None:
        [line] = self.load_error([{"type": "object"}])
        self.assertIn("a schema is a JSON object or a boolean", line)

    def test_missing_file(self) -> None:
        path = os.path.join(self.dir, "nope.json")
        with self.assertRaises(ConfigError) as raised:
            load_schema(path, KEY)
        self.assertEqual(len(raised.exception.errors), 1)
        self.assertTrue(raised.exception.errors[0].startswith(f"{KEY}: {path}: cannot read"))


class ReferenceTests(_Files):
    """``$ref`` to ``$defs``, anchors and files under the schema's directory; nothing else."""

    def setUp(self) -> None:
        super().setUp()
        self.write(
            "common/address.json",
            {
                "$defs": {
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    "city": {"$ref": "#/$defs/name"},
                    "name": {"type": "string", "minLength": 1},
                },
                "type": "object",
                "required": ["zip"],
                "properties": {"zip": {"$ref": "#/$defs/zip"}, "city": {"$ref": "#/$defs/city"}},
            },
        )
        self.write("common/tags.json", {"type": "array", "items": {"$ref": "../main.json#tag"}})

    def main(self) -> CompiledSchema:
        return self.load(
            {
                "type": "object",
                "$defs": {"tag": {"$anchor": "tag", "type": "string", "maxLength": 3}},
                "properties": {
                    "address": {"$ref": "common/address.json"},
                    "zip": {"$ref": "common/address.json#/$defs/zip"},
                    "tags": {"$ref": "./common/tags.json"},
                },
            },
            "main.json",
        )

    def test_local_files_and_defs(self) -> None:
        compiled = self.main()
        self.assertEqual(
            compiled.validate({"address": {"zip": "12345", "city": "Oslo"}, "tags": ["a"]}), []
        )
        problems = compiled.validate(
            {"address": {"zip": SECRET, "city": ""}, "zip": 5, "tags": ["ok", SECRET]}
        )
        self.assertEqual(
            sorted((p.instance_location, p.keyword) for p in problems),
            [
                ("/address/city", "minLength"),
                ("/address/zip", "pattern"),
                ("/tags/1", "maxLength"),
                ("/zip", "type"),
            ],
        )
        self.assertEqual(
            compiled.validate({"address": {}})[0].message, "required property 'zip' is missing"
        )

    def test_files_are_read_at_load_only(self) -> None:
        compiled = self.main()
        os.remove(os.path.join(self.dir, "common", "address.json"))
        os.remove(os.path.join(self.dir, "common", "tags.json"))
        self.assertEqual([p.keyword for p in compiled.validate({"zip": "1"})], ["pattern"])
        self.assertEqual(compiled.validate({"tags": ["abc"]}), [])

    def _refuse_network(self) -> list[Any]:
        attempts: list[Any] = []

        def refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(args)
            raise AssertionError("no network access may be attempted")

        self.patch(socket, "create_connection", refuse)
        self.patch(socket, "getaddrinfo", refuse)
        self.patch(socket.socket, "connect", refuse)
        return attempts

    def test_remote_ref_is_refused_and_never_fetched(self) -> None:
        attempts = self._refuse_network()
        for ref in ("https://example.com/schemas/user.json", "http://127.0.0.1:1/x.json#/$defs/a"):
            [line] = self.load_error({"properties": {"a": {"$ref": ref}}})
            self.assertIn(f"$ref '{ref}' in schema.json: remote references are not fetched", line)
        self.assertEqual(attempts, [])

    def test_remote_ref_in_a_referenced_file(self) -> None:
        attempts = self._refuse_network()
        self.write("sub/b.json", {"$ref": "http://example.com/b.json"})
        [line] = self.load_error({"$ref": "sub/b.json"})
        self.assertIn("$ref 'http://example.com/b.json' in sub/b.json: remote references", line)
        self.assertEqual(attempts, [])

    def test_relative_ref_under_a_remote_id_is_remote(self) -> None:
        attempts = self._refuse_network()
        [line] = self.load_error({"$id": "https://example.com/root.json", "$ref": "other.json"})
        self.assertIn("$ref 'other.json' (https://example.com/other.json)", line)
        self.assertEqual(attempts, [])

    def test_embedded_resources_and_metaschemas_need_no_fetch(self) -> None:
        attempts = self._refuse_network()
        compiled = self.load(
            {
                "$id": "https://example.com/root.json",
                "$defs": {"b": {"$id": "b.json", "type": "integer"}},
                "properties": {
                    "n": {"$ref": "b.json"},
                    "s": {"$ref": "https://json-schema.org/draft/2020-12/schema"},
                },
            }
        )
        self.assertEqual(compiled.validate({"n": 1, "s": {"type": "string"}}), [])
        self.assertEqual([p.keyword for p in compiled.validate({"n": "x"})], ["type"])
        self.assertEqual(attempts, [])

    def test_ref_escaping_the_directory_is_refused(self) -> None:
        outside = os.path.join(os.path.dirname(self.dir), "outside.json")
        with open(outside, "w") as f:
            f.write('{"type": "string"}')
        self.addCleanup(os.remove, outside)
        [line] = self.load_error({"$ref": "../outside.json"})
        self.assertIn("$ref '../outside.json'", line)
        self.assertIn("resolves outside the schema's directory", line)
        [line] = self.load_error({"$ref": outside})
        self.assertIn("resolves outside the schema's directory", line)

    def test_symlink_escaping_the_directory_is_refused(self) -> None:
        outside = os.path.join(os.path.dirname(self.dir), "outside-link-target.json")
        with open(outside, "w") as f:
            f.write('{"type": "string"}')
        self.addCleanup(os.remove, outside)
        os.symlink(outside, os.path.join(self.dir, "link.json"))
        [line] = self.load_error({"$ref": "link.json"})
        self.assertIn("resolves outside the schema's directory", line)

    def test_missing_file_and_dangling_pointer(self) -> None:
        errors = self.load_error(
            {
                "properties": {
                    "a": {"$ref": "missing.json"},
                    "b": {"$ref": "#/$defs/nope"},
                    "c": {"$ref": "#nope"},
                }
            }
        )
        self.assertEqual(len(errors), 3)
        self.assertIn("$ref 'missing.json'", errors[0])
        self.assertIn("cannot read the schema", errors[0])
        self.assertIn(
            "$ref '#/$defs/nope' in schema.json: the JSON pointer leads nowhere", errors[1]
        )
        self.assertIn("$ref '#nope' in schema.json: no such anchor", errors[2])

    def test_invalid_referenced_file(self) -> None:
        self.write("bad.json", {"type": 12})
        [line] = self.load_error({"$ref": "bad.json"})
        self.assertIn("$ref 'bad.json' in schema.json: invalid draft 2020-12 schema at /type", line)

    def test_ref_inside_a_value_is_not_a_reference(self) -> None:
        compiled = self.load({"const": {"$ref": "https://example.com/not-a-ref"}})
        self.assertEqual(compiled.validate({"$ref": "https://example.com/not-a-ref"}), [])


class ProblemTests(_Files):
    """Problems point into the instance, name the keyword and never echo instance values."""

    SCHEMA: dict[str, Any] = {
        "type": "object",
        "required": ["user", "id"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer", "minimum": 1, "multipleOf": 2},
            "user": {
                "type": "object",
                "required": ["email", "name"],
                "properties": {
                    "email": {"type": "string", "format": "email", "maxLength": 5},
                    "name": {"type": "string", "pattern": "^[a-z]+$"},
                    "role": {"enum": ["admin", "user"]},
                    "kind": {"const": "person"},
                    "a/b~c": {"type": "boolean"},
                    "tags": {"type": "array", "uniqueItems": True, "maxItems": 1},
                },
            },
        },
    }

    def test_pointers_keywords_and_messages(self) -> None:
        compiled = self.load(self.SCHEMA)
        problems = compiled.validate(
            {
                "id": 3,
                "user": {
                    "email": SECRET,
                    "name": SECRET,
                    "role": SECRET,
                    "kind": SECRET,
                    "a/b~c": SECRET,
                    "tags": [SECRET, SECRET],
                },
                SECRET: SECRET,
            }
        )
        got = {(p.instance_location, p.keyword): p.message for p in problems}
        self.assertEqual(
            got,
            {
                ("", "additionalProperties"): "has properties the schema does not allow",
                ("/id", "multipleOf"): "is not a multiple of 2",
                ("/user/email", "maxLength"): "is longer than 5 characters",
                ("/user/name", "pattern"): "does not match the pattern '^[a-z]+$'",
                ("/user/role", "enum"): 'is not one of ["admin", "user"]',
                ("/user/kind", "const"): "is not the constant 'person'",
                ("/user/a~1b~0c", "type"): "is not of type 'boolean'",
                ("/user/tags", "uniqueItems"): "has duplicate items",
                ("/user/tags", "maxItems"): "has more than 1 items",
            },
        )
        # Most relevant first: the shallowest first, then in document order.
        self.assertEqual([p.instance_location for p in problems][:3], ["", "/id", "/user/email"])

    def test_required_names_each_missing_property(self) -> None:
        problems = self.load(self.SCHEMA).validate({"user": {"name": "bob"}})
        self.assertEqual(
            [(p.instance_location, p.keyword, p.message) for p in problems],
            [
                ("", "required", "required property 'id' is missing"),
                ("/user", "required", "required property 'email' is missing"),
            ],
        )

    def test_type_messages(self) -> None:
        compiled = self.load({"type": ["string", "null"]})
        self.assertEqual(
            compiled.validate(5), [Problem("", "type", "is not of type 'string', 'null'")]
        )

    def test_secret_never_in_a_message(self) -> None:
        schemas: list[dict[str, Any]] = [
            self.SCHEMA,
            {"minLength": 100},
            {"maxLength": 1},
            {"minimum": 1e9},
            {"exclusiveMaximum": 0},
            {"type": "integer"},
            {"not": {"type": "string"}},
            {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
            {"oneOf": [{"type": "string"}, {"minLength": 1}]},
            {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
            {"allOf": [{"type": "integer"}]},
            {"if": {"type": "string"}, "then": {"maxLength": 2}, "else": False},
            {"propertyNames": {"maxLength": 3}},
            {"unevaluatedProperties": False},
            {"contains": {"type": "integer"}},
            {"prefixItems": [{"type": "integer"}], "items": False},
            {"minProperties": 5},
            {"dependentSchemas": {SECRET: {"required": ["x"]}}},
            {"additionalProperties": {"type": "integer"}},
        ]
        instances: list[Any] = [
            SECRET,
            {SECRET: SECRET, "user": {"email": SECRET}},
            [SECRET, SECRET],
            {"nested": [SECRET]},
        ]
        seen = 0
        for schema in schemas:
            compiled = self.load(schema)
            for instance in instances:
                for problem in compiled.validate(instance):
                    seen += 1
                    self.assertNotIn(SECRET, problem.message, (schema, problem))
                    self.assertNotIn("hunter2", problem.message)
        self.assertGreater(seen, 30)

    def test_count_is_bounded(self) -> None:
        compiled = self.load({"type": "array", "items": {"type": "string"}})
        problems = compiled.validate(list(range(5000)))
        self.assertEqual(len(problems), MAX_PROBLEMS)
        self.assertEqual(problems[0], Problem("/0", "type", "is not of type 'string'"))
        self.assertEqual(problems[-1].instance_location, "/49")

    RECURSIVE: dict[str, Any] = {
        "$defs": {"a": {"allOf": [{"type": "array", "items": {"anyOf": [{"$ref": "#"}]}}]}},
        "oneOf": [{"$ref": "#/$defs/a"}, {"type": "string"}],
    }

    @staticmethod
    def nested(levels: int) -> Any:
        value: list[Any] = []
        for _ in range(levels - 1):
            value = [value]
        return value

    def test_too_deep_an_instance_is_not_validated(self) -> None:
        # 100 levels of this recursive schema kill PyPy (a stack overflow in a C extension),
        # even when called from a deep stack; the depth bound keeps every instance far from it.
        compiled = self.load(self.RECURSIVE)
        too_deep = [Problem("", "maxDepth", f"is nested deeper than {MAX_DEPTH} levels")]

        def from_deep_stack(frames: int, instance: Any) -> list[Problem]:
            if frames:
                return from_deep_stack(frames - 1, instance)
            return compiled.validate(instance)

        for frames in (0, 300):
            self.assertEqual(from_deep_stack(frames, self.nested(MAX_DEPTH)), [])
            self.assertEqual(from_deep_stack(frames, self.nested(MAX_DEPTH + 1)), too_deep)
        self.assertEqual(compiled.validate(self.nested(200000)), too_deep)
        self.assertEqual(compiled.validate({"a": [{"b": self.nested(MAX_DEPTH)}]}), too_deep)
        self.assertFalse(compiled.is_valid(self.nested(MAX_DEPTH + 1)))
        self.assertTrue(compiled.is_valid([[[]]]))
        self.assertEqual(compiled.validate("scalar"), [])

    def test_depth_bound_is_configurable(self) -> None:
        compiled = load_schema(self.write("schema.json", {}), KEY, max_depth=2)
        self.assertEqual(compiled.validate({"a": [1]}), [])
        self.assertEqual(
            compiled.validate({"a": [[1]]}),
            [Problem("", "maxDepth", "is nested deeper than 2 levels")],
        )


class ParseJsonTests(SynchronousTestCase):
    """Strict JSON bodies: UTF-8, no NaN/Infinity; errors never quote the body."""

    def test_values(self) -> None:
        self.assertEqual(
            parse_json(b'{"a": [1, 2.5, "\\u00e9", null]}'), ({"a": [1, 2.5, "é", None]}, None)
        )
        self.assertEqual(parse_json('"é"'.encode()), ("é", None))
        self.assertEqual(parse_json(b" 3 "), (3, None))

    def test_duplicate_keys_last_wins(self) -> None:
        self.assertEqual(parse_json(b'{"a": 1, "a": 2}'), ({"a": 2}, None))

    def test_errors(self) -> None:
        cases = {
            b"": "invalid JSON: Expecting value at line 1 column 1",
            b'{"a": 1,}': "invalid JSON: ",
            b'{"a": 1} x': "invalid JSON: Extra data at line 1 column 10",
            b"[NaN]": "invalid JSON: NaN is not JSON",
            b"Infinity": "invalid JSON: Infinity is not JSON",
            b"[-Infinity]": "invalid JSON: -Infinity is not JSON",
            b"{'a': 1}": "invalid JSON: Expecting property name",
            b'"caf\xe9"': "the body is not UTF-8 (invalid byte at offset 4)",
            '"x"'.encode("utf-16"): "the body is not UTF-8",
            b'\xef\xbb\xbf{"a": 1}': "the body starts with a byte order mark",
        }
        for body, expected in cases.items():
            value, error = parse_json(body)
            self.assertIsNone(value)
            self.assertIsNotNone(error, body)
            assert error is not None
            self.assertTrue(error.startswith(expected), (body, error))

    def test_error_does_not_quote_the_body(self) -> None:
        value, error = parse_json(('{"password": "' + SECRET + '" oops}').encode())
        self.assertIsNone(value)
        assert error is not None
        self.assertNotIn(SECRET, error)

    def test_too_deep(self) -> None:
        value, error = parse_json(b"[" * 200000 + b"]" * 200000)
        if error is not None:  # an interpreter may manage; if not, it is a clean error
            self.assertIsNone(value)
            self.assertIn("invalid JSON", error)


class ProblemBodyTests(SynchronousTestCase):
    """The RFC 9457 document answered for a refused body."""

    def test_validation_problem(self) -> None:
        body = problem_body(
            400,
            "Request body does not match the schema",
            [
                Problem("/user/email", "type", "is not of type 'string'"),
                Problem("", "required", "required property 'id' is missing"),
            ],
            "req-1",
        )
        self.assertEqual(
            json.loads(body),
            {
                "type": VALIDATION_PROBLEM_TYPE,
                "title": "Request body does not match the schema",
                "status": 400,
                "errors": [
                    {
                        "instanceLocation": "/user/email",
                        "keyword": "type",
                        "message": "is not of type 'string'",
                    },
                    {
                        "instanceLocation": "",
                        "keyword": "required",
                        "message": "required property 'id' is missing",
                    },
                ],
                "request_id": "req-1",
            },
        )
        body.decode("ascii")

    def test_without_problems_is_about_blank(self) -> None:
        doc = json.loads(problem_body(415, "Unsupported Media Type", [], "r", detail="use JSON"))
        self.assertEqual(
            doc,
            {
                "type": "about:blank",
                "title": "Unsupported Media Type",
                "status": 415,
                "detail": "use JSON",
                "errors": [],
                "request_id": "r",
            },
        )
        doc = json.loads(problem_body(400, "Bad Request", [], "r", type_uri="urn:x"))
        self.assertEqual(doc["type"], "urn:x")


class ContentTypeTests(SynchronousTestCase):
    """Which ``Content-Type`` values are JSON."""

    def test_json(self) -> None:
        for value in (
            b"application/json",
            b"Application/JSON",
            b"application/json; charset=utf-8",
            b"application/json;charset=UTF-8",
            b"  application/json ",
            b"application/problem+json",
            b"application/vnd.api+json; ext=x",
            b"application/merge-patch+json",
            b"text/x+json",
        ):
            self.assertTrue(is_json_content_type(value), value)

    def test_not_json(self) -> None:
        for value in (
            None,
            b"",
            b"text/plain",
            b"application/jsonx",
            b"application/json-seq",
            b"application/x-www-form-urlencoded",
            b"json",
            b"application/",
            b"/json",
            b"application/+json",
            b"multipart/form-data; boundary=x+json",
            b"text/html; a=application/json",
        ):
            self.assertFalse(is_json_content_type(value), value)
