"""GraphQLPolicy: GraphQL over HTTP parsing, every limit just under and just over, fragments and
their cycles, introspection, schema validation, operation selection, batches, persisted
queries (APQ and the allowlist), the document cache and bounded operation names."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted import graphql_policy
from avx_twisted._configmodel import ConfigError
from avx_twisted.graphql_policy import (
    Decision,
    GraphQLPolicy,
    Operation,
    load_allowlist,
    load_schema_sdl,
)

SDL = """
type Query { user(id: ID!): User  users(first: Int): [User!]!  hello: String }
type Mutation { rename(id: ID!, name: String!): User }
type User { id: ID!  name: String  friends(first: Int, last: Int): [User!]! }
"""


NO_STORE = (b"Cache-Control", b"private, no-cache, must-revalidate")


def temp_file(case: SynchronousTestCase) -> str:
    """A path in a fresh temporary directory removed after the test (``mktemp`` would leave a
    directory named after the test in the working directory under pytest)."""
    directory = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "file")


def sha(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


def post(policy: GraphQLPolicy, data: Any, content_type: bytes = b"application/json") -> Decision:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return policy.check(b"POST", content_type, b"", body)


def get(policy: GraphQLPolicy, **params: Any) -> Decision:
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    return policy.check(b"GET", None, urlencode(fields).encode(), None)


def query(policy: GraphQLPolicy, text: str, **more: Any) -> Decision:
    return post(policy, {"query": text, **more})


def errors(decision: Decision) -> Any:
    return json.loads(decision.body)["errors"]


def nested(depth: int) -> str:
    return "{ " + "a { " * (depth - 1) + "b" + " }" * (depth - 1) + " }"


class Harness(SynchronousTestCase):
    def assertAllowed(self, decision: Decision) -> Decision:
        self.assertTrue(decision.allowed, decision.body)
        self.assertEqual((decision.status, decision.body, decision.reason), (200, b"", ""))
        return decision

    def assertRefused(self, decision: Decision, status: int, reason: str, text: str = "") -> Any:
        self.assertFalse(decision.allowed)
        self.assertEqual((decision.status, decision.reason), (status, reason), decision.body)
        self.assertIn(
            (b"Content-Type", b"application/graphql-response+json; charset=utf-8"),
            decision.headers,
        )
        body = json.loads(decision.body)
        if isinstance(body, dict):
            self.assertIn(text, body["errors"][0]["message"])
        return body


class LimitTests(Harness):
    def test_depth_just_under_and_just_over(self):
        policy = GraphQLPolicy(max_depth=3)
        self.assertAllowed(query(policy, nested(3)))
        self.assertRefused(
            query(policy, nested(4)), 400, "depth", "Query depth 4 exceeds the limit of 3."
        )

    def test_depth_expands_fragments_but_not_inline_fragment_levels(self):
        policy = GraphQLPolicy(max_depth=3)
        self.assertAllowed(query(policy, "{ a { ... on T { ...F } } } fragment F on T { b { c } }"))
        text = "{ a { ...F } } fragment F on T { b { ...G } } fragment G on T { c { d } }"
        self.assertRefused(query(policy, text), 400, "depth", "Query depth 4")

    def test_nesting_beyond_the_parser_is_refused_not_a_crash(self):
        policy = GraphQLPolicy(max_tokens=None)
        self.assertRefused(query(policy, nested(2000)), 400, "depth", "nested too deeply")

    def test_aliases_counted_through_fragments(self):
        policy = GraphQLPolicy(max_aliases=2)
        self.assertAllowed(query(policy, "{ x: a y: a b }"))
        self.assertRefused(
            query(policy, "{ x: a y: a z: a }"),
            400,
            "aliases",
            "Aliased fields 3 exceeds the limit of 2.",
        )
        self.assertAllowed(query(policy, "{ u { ...F } } fragment F on U { x: a }"))
        self.assertRefused(
            query(policy, "{ u { ...F } v { ...F } w { ...F } } fragment F on U { x: a }"),
            400,
            "aliases",
        )

    def test_root_fields_counted_with_root_fragments_expanded(self):
        policy = GraphQLPolicy(max_root_fields=3)
        self.assertAllowed(query(policy, "{ a b { c d e f } __typename }"))
        self.assertRefused(
            query(policy, "{ a b c d }"),
            400,
            "root_fields",
            "Root fields 4 exceeds the limit of 3.",
        )
        self.assertRefused(
            query(policy, "{ a ...F ... on Q { d } } fragment F on Q { b c }"), 400, "root_fields"
        )

    def test_tokens_just_under_and_just_over(self):
        policy = GraphQLPolicy(max_tokens=6)
        self.assertAllowed(query(policy, "{ a b c d }"))  # { a b c d } : 6 tokens
        body = self.assertRefused(
            query(policy, "{ a b c d e }"), 400, "tokens", "Document contains more than 6 tokens"
        )
        self.assertEqual(body["errors"][0]["extensions"]["code"], "GRAPHQL_PARSE_FAILED")

    def test_comments_count_against_the_token_budget(self):
        policy = GraphQLPolicy(max_tokens=6)
        self.assertAllowed(query(policy, "#one\n{ a }"))
        self.assertRefused(query(policy, "#\n" * 7 + "{ a }"), 400, "tokens")

    def test_a_huge_query_is_cheap_to_refuse(self):
        policy = GraphQLPolicy(max_tokens=10000)
        started = time.perf_counter()
        # Under the character cap (32 per token) but far over the tokens: the parser stops.
        self.assertRefused(query(policy, "{ " + "a " * 150_000 + "}"), 400, "tokens")
        # Over the character cap: refused before any parsing.
        self.assertRefused(
            query(policy, "{ a }" + " " * 4_000_000), 400, "tokens", "longer than 320000 characters"
        )
        self.assertLess(time.perf_counter() - started, 2.0)

    def test_token_limit_on_a_graphql_core_without_parser_limits(self):
        for mode in ("tokens", "lexer"):
            self.patch(graphql_policy, "_TOKEN_LIMIT", mode)
            policy = GraphQLPolicy(max_tokens=6)
            self.assertAllowed(query(policy, "{ a b c d }"))
            self.assertRefused(query(policy, "{ a b c d e }"), 400, "tokens")

    def test_complexity_counts_fields_and_multiplies_by_first(self):
        text = "{ users(first: 10) { id name } }"  # 1 + 10 * 2
        self.assertAllowed(query(GraphQLPolicy(max_complexity=21), text))
        self.assertRefused(
            query(GraphQLPolicy(max_complexity=20), text),
            400,
            "complexity",
            "Query complexity 21 exceeds the limit of 20.",
        )

    def test_complexity_multipliers_nest_and_take_last_and_limit(self):
        text = "{ a(last: 3) { b(limit: 4) { c d } } e }"  # 1 + 3 * (1 + 4 * 2) + 1 = 29
        self.assertAllowed(query(GraphQLPolicy(max_complexity=29), text))
        self.assertRefused(query(GraphQLPolicy(max_complexity=28), text), 400, "complexity")

    def test_complexity_from_variables_defaults_and_fragments(self):
        policy = GraphQLPolicy(max_complexity=21)
        text = "query Q($n: Int = 10) { ...F } fragment F on Query { users(first: $n) { id name } }"
        self.assertAllowed(query(policy, text))  # the default, 10: 21
        self.assertAllowed(query(policy, text, variables={"n": 10}))
        self.assertRefused(
            query(policy, text, variables={"n": 11}), 400, "complexity", "Query complexity 23"
        )
        self.assertAllowed(query(policy, text, variables={"n": None}))
        self.assertAllowed(query(policy, text, variables={"n": True}))  # not an integer
        no_default = "query Q($n: Int) { users(first: $n) { id name } }"
        self.assertAllowed(query(policy, no_default))
        self.assertRefused(query(policy, no_default, variables={"n": 10**12}), 400, "complexity")

    def test_complexity_of_huge_multipliers_is_refused_not_a_crash(self):
        policy = GraphQLPolicy(max_depth=None, max_tokens=None)
        digits = "9" * 5000
        self.assertRefused(
            query(policy, f"{{ a(first: {digits}) {{ b }} }}"), 400, "complexity", "over 10"
        )
        # 300 fragments deep (the parser does not see that nesting): 10**5100, more digits
        # than CPython prints.
        chain = " ".join(
            f"fragment F{i} on Q {{ a(first: $n) {{ ...F{i + 1} }} }}" for i in range(300)
        )
        text = "query Q($n: Int) { ...F0 } " + chain + " fragment F300 on Q { b }"
        self.assertRefused(
            query(policy, text, variables={"n": 10**17}), 400, "complexity", "over 10"
        )

    def test_fragment_fan_out_is_costed_once_per_fragment(self):
        levels = 40  # 2**40 paths: expanded naively this would never finish
        fragments = " ".join(
            f"fragment F{i} on Q {{ x: a(first: $n) {{ ...F{i + 1} }} y: a {{ ...F{i + 1} }} }}"
            for i in range(levels)
        )
        text = f"query Q($n: Int) {{ ...F0 }} {fragments} fragment F{levels} on Q {{ z }}"
        policy = GraphQLPolicy(max_depth=None, max_aliases=None, max_tokens=None)
        started = time.perf_counter()
        self.assertRefused(query(policy, text, variables={"n": 2}), 400, "complexity")
        self.assertAllowed(
            query(
                GraphQLPolicy(
                    max_depth=None, max_aliases=None, max_tokens=None, max_complexity=None
                ),
                text,
                variables={"n": 2},
            )
        )
        self.assertLess(time.perf_counter() - started, 2.0)

    def test_a_refusal_names_the_operation_it_knows(self):
        decision = query(GraphQLPolicy(max_depth=1), "query Deep { a { b } }")
        self.assertRefused(decision, 400, "depth")
        self.assertEqual(decision.operations, (Operation("query", "Deep"),))

    def test_no_limit_when_none(self):
        policy = GraphQLPolicy(
            max_depth=None,
            max_aliases=None,
            max_root_fields=None,
            max_tokens=None,
            max_complexity=None,
        )
        self.assertAllowed(query(policy, nested(40)))
        self.assertAllowed(
            query(
                policy, "{ " + " ".join(f"x{i}: a(first: 1000) {{ b }}" for i in range(100)) + " }"
            )
        )


class DocumentTests(Harness):
    def test_syntax_error_with_location(self):
        body = self.assertRefused(query(GraphQLPolicy(), "{\n  a(x: ) }"), 400, "syntax")
        self.assertEqual(
            body,
            {
                "errors": [
                    {
                        "message": "Syntax Error: Unexpected ')'.",
                        "locations": [{"line": 2, "column": 8}],
                        "extensions": {"code": "GRAPHQL_PARSE_FAILED"},
                    }
                ]
            },
        )

    def test_fragment_cycles_are_refused_not_recursed_into(self):
        policy = GraphQLPolicy()
        for text in (
            "{ ...A } fragment A on Q { a ...A }",
            "{ ...A } fragment A on Q { b { ...B } } fragment B on Q { c { ...A } }",
            "{ a } fragment A on Q { ...B } fragment B on Q { ...A }",  # unused, still refused
        ):
            self.assertRefused(query(policy, text), 400, "fragment_cycle", "within itself")

    def test_a_long_fragment_chain_does_not_exhaust_the_stack(self):
        n = 1500
        chain = " ".join(f"fragment F{i} on Q {{ a{i} {{ ...F{i + 1} }} }}" for i in range(n))
        text = "{ ...F0 } " + chain + f" fragment F{n} on Q {{ z }}"
        policy = GraphQLPolicy(max_tokens=None)
        self.assertRefused(query(policy, text), 400, "depth", f"Query depth {n + 1} exceeds")

    def test_unknown_and_duplicate_fragments(self):
        policy = GraphQLPolicy()
        self.assertRefused(
            query(policy, "{ ...Nope }"), 400, "validation", 'Unknown fragment "Nope".'
        )
        self.assertRefused(
            query(policy, "{ a } fragment F on Q { ...G }"),
            400,
            "validation",
            'Unknown fragment "G".',
        )
        self.assertRefused(
            query(policy, "{ ...F } fragment F on Q { a } fragment F on Q { b }"),
            400,
            "validation",
            'only one fragment named "F"',
        )
        self.assertAllowed(query(policy, "{ ...F } fragment F on Q { a }"))

    def test_type_definitions_are_not_requests(self):
        self.assertRefused(
            query(GraphQLPolicy(), "type T { a: Int } { a }"),
            400,
            "validation",
            "Only operations and fragments",
        )

    def test_operation_selection_rules(self):
        policy = GraphQLPolicy()
        two = "query A { a } mutation B { b }"
        self.assertRefused(
            query(policy, two),
            400,
            "operation",
            "Must provide operation name if query contains multiple operations.",
        )
        self.assertRefused(
            query(policy, two, operationName="C"), 400, "operation", 'Unknown operation named "C".'
        )
        self.assertRefused(
            query(policy, "fragment F on Q { a }"), 400, "operation", "Must provide an operation."
        )
        decision = self.assertAllowed(query(policy, two, operationName="B"))
        self.assertEqual(decision.operations, (Operation("mutation", "B"),))
        decision = self.assertAllowed(query(policy, "subscription { s }"))
        self.assertEqual(decision.operations, (Operation("subscription", None),))

    def test_limits_apply_to_the_selected_operation(self):
        policy = GraphQLPolicy(max_depth=2)
        text = "query Shallow { a } query Deep { a { b { c } } }"
        self.assertAllowed(query(policy, text, operationName="Shallow"))
        decision = self.assertRefused(query(policy, text, operationName="Deep"), 400, "depth")
        self.assertEqual(decision["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED")


class IntrospectionTests(Harness):
    CASES = (
        "{ __schema { types { name } } }",
        '{ __type(name: "User") { name } }',
        "{ a ...I } fragment I on Query { __schema { queryType { name } } }",
        '{ a ... on Query { __type(name: "X") { name } } }',
    )

    def test_refused_when_off_everywhere_including_fragments(self):
        policy = GraphQLPolicy(introspection=False)
        for text in self.CASES:
            self.assertRefused(
                query(policy, text), 400, "introspection", "introspection is not allowed"
            )

    def test_typename_is_not_introspection(self):
        self.assertAllowed(query(GraphQLPolicy(introspection=False), "{ a { __typename } }"))

    def test_allowed_by_default(self):
        policy = GraphQLPolicy()
        for text in self.CASES:
            self.assertAllowed(query(policy, text))


class SchemaTests(Harness):
    def sdl_file(self, text: str) -> str:
        path = temp_file(self)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_operations_are_validated_against_the_schema(self):
        schema = load_schema_sdl(self.sdl_file(SDL), "routes[0].graphql.schema_file")
        policy = GraphQLPolicy(schema=schema, introspection=False)
        self.assertAllowed(query(policy, '{ user(id: "1") { name friends(first: 2) { id } } }'))
        self.assertAllowed(query(policy, 'mutation { rename(id: "1", name: "x") { id } }'))
        body = self.assertRefused(
            query(policy, "{ user(id: 1) { nope } }"),
            400,
            "validation",
            "Cannot query field 'nope' on type 'User'.",
        )
        self.assertEqual(body["errors"][0]["locations"], [{"line": 1, "column": 17}])
        self.assertEqual(body["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED")
        body = self.assertRefused(
            query(policy, '{ user { id } users(first: "x") { id } }'), 400, "validation"
        )
        self.assertEqual(len(body["errors"]), 2)
        self.assertRefused(query(policy, "{ __schema { types { name } } }"), 400, "introspection")

    def test_validation_is_cached_with_the_document(self):
        schema = load_schema_sdl(self.sdl_file(SDL), "k")
        policy = GraphQLPolicy(schema=schema)
        calls = []
        real = graphql_policy.validate
        self.patch(graphql_policy, "validate", lambda *a, **k: calls.append(1) or real(*a, **k))
        for _ in range(3):
            self.assertAllowed(query(policy, "{ hello }"))
            self.assertRefused(query(policy, "{ nope }"), 400, "validation")
        self.assertEqual(len(calls), 2)

    def test_bad_sdl_is_a_config_error_with_the_key_path(self):
        key = "routes[2].graphql.schema_file"
        for text, expected in (
            ("type Query { a: }", "Syntax Error: Expected"),
            ("type Query { a: Missing }", "Missing"),
            ("type Foo { a: Int }", "Query root type must be provided"),
        ):
            e = self.assertRaises(ConfigError, load_schema_sdl, self.sdl_file(text), key)
            self.assertTrue(e.errors[0].startswith(key + ": "), e.errors)
            self.assertIn(expected, str(e))
        e = self.assertRaises(ConfigError, load_schema_sdl, "/nonexistent/x.graphql", key)
        self.assertIn("cannot read", e.errors[0])


class HttpTests(Harness):
    def test_get_query_with_variables_and_operation_name(self):
        policy = GraphQLPolicy(max_complexity=21)
        text = "query A($n: Int) { users(first: $n) { id name } } query B { b }"
        decision = self.assertAllowed(
            get(policy, query=text, operationName="A", variables={"n": 10}, extensions={})
        )
        self.assertEqual(decision.operations, (Operation("query", "A"),))
        self.assertIsNone(decision.upstream_query_string)
        self.assertRefused(
            get(policy, query=text, operationName="A", variables={"n": 11}), 400, "complexity"
        )

    def test_mutation_and_subscription_over_get_are_405_allow_post(self):
        policy = GraphQLPolicy()
        for text, kind in (
            ("mutation M { a }", "mutation"),
            ("subscription { s }", "subscription"),
        ):
            decision = get(policy, query=text)
            self.assertRefused(decision, 405, "method", f"A {kind} cannot be sent with GET")
            self.assertIn((b"Allow", b"POST"), decision.headers)
        self.assertAllowed(post(policy, {"query": "mutation M { a }"}))
        self.assertAllowed(get(policy, query="query Q { a } mutation M { a }", operationName="Q"))

    def test_other_methods_are_405_allow_get_post(self):
        decision = GraphQLPolicy().check(b"PUT", b"application/json", b"", b'{"query":"{a}"}')
        self.assertRefused(decision, 405, "method")
        self.assertIn((b"Allow", b"GET, POST"), decision.headers)

    def test_post_media_type(self):
        policy = GraphQLPolicy()
        body = {"query": "{ a }"}
        self.assertAllowed(post(policy, body, b"Application/JSON; charset=UTF-8"))
        for content_type in (
            None,
            b"text/plain",
            b"application/graphql",
            b"application/json; charset=latin-1",
        ):
            self.assertRefused(post(policy, body, content_type), 415, "content_type")

    def test_malformed_requests_are_400(self):
        policy = GraphQLPolicy()
        for body, text in (
            (b"", "empty"),
            (b"{", "not valid JSON"),
            (b"\xff\xfe", "not valid JSON"),
            (b'{"query": "{ a }", "query": "{ b }"}', "not valid JSON"),  # duplicate key
            (b'{"query": "{a(first: $n){b}}", "variables": {"n": 1, "n": 9}}', "not valid JSON"),
            (b"[" * 100_000, "not valid JSON"),
            (b'"{ a }"', "a JSON object"),
            (b"{}", "no query"),
            (b'{"query": 7}', "query must be a string"),
            (b'{"query": "{ a }", "operationName": 1}', "operationName must be a string"),
            (b'{"query": "{ a }", "variables": "{}"}', "variables must be a JSON object"),
            (b'{"query": "{ a }", "variables": [1]}', "variables must be a JSON object"),
            (b'{"query": "{ a }", "extensions": 1}', "extensions must be a JSON object"),
            (b'{"query": "{ a \\ud800 }"}', "not valid Unicode"),
            (b'{"query": "{ a }", "variables": {"n": NaN}}', "not valid JSON"),
        ):
            self.assertRefused(post(policy, body), 400, "malformed", text)

    def test_malformed_get_parameters_are_400(self):
        policy = GraphQLPolicy()
        for qs, text in (
            (b"query=%7Ba%7D&variables=%7B", "variables is not valid JSON"),
            (b"query=%7Ba%7D&extensions=nope", "extensions is not valid JSON"),
            (b"query=%7Ba%7D&variables=%5B%5D", "variables must be a JSON object"),
            (b"query=%7Ba%7D&query=%7Bb%7D", "query is given twice"),
            (b"query=%7Ba%7D&operationName=A&operationName=B", "operationName is given twice"),
            (b"query=%FF", "not valid"),
            (b"", "no query"),
            (b"other=1", "no query"),
        ):
            self.assertRefused(policy.check(b"GET", None, qs, None), 400, "malformed", text)
        self.assertAllowed(policy.check(b"GET", None, b"query=%7Ba%7D&cachebust=1", None))

    def test_parameters_where_the_upstream_could_read_others_are_400(self):
        policy = GraphQLPolicy()
        body = b'{"query": "{ a }"}'
        decision = policy.check(b"POST", b"application/json", b"query=%7Bsecret%7D", body)
        self.assertRefused(decision, 400, "malformed", "go in its body")
        self.assertAllowed(policy.check(b"POST", b"application/json", b"tracking=1", body))
        decision = policy.check(b"GET", None, b"query=%7Ba%7D", b'{"query": "{ secret }"}')
        self.assertRefused(decision, 400, "malformed", "has no body")
        self.assertAllowed(policy.check(b"GET", None, b"query=%7Ba%7D", b""))

    def test_never_raises_on_garbage(self):
        policy = GraphQLPolicy(persisted_queries="allow")
        bodies = [
            b"null",
            b"1e999",
            b"[null]",
            b'{"query": null, "extensions": {"persistedQuery":'
            b' {"version": 1, "sha256Hash": null}}}',
            b'{"query": "' + b"{" * 5000 + b'"}',
            b'{"extensions": {"persistedQuery": []}}',
            b'{"query": "query ($a: Int) { a(first: $a) }", "variables": {"a": 1e300}}',
        ]
        for body in bodies:
            decision = post(policy, body)
            self.assertIsInstance(decision, Decision)


class BatchTests(Harness):
    def test_batch_up_to_max_batch(self):
        policy = GraphQLPolicy(max_batch=2)
        decision = self.assertAllowed(
            post(policy, [{"query": "query A { a }"}, {"query": "mutation B { b }"}])
        )
        self.assertTrue(decision.batch)
        self.assertEqual(decision.operations, (Operation("query", "A"), Operation("mutation", "B")))
        self.assertRefused(
            post(policy, [{"query": "{ a }"}] * 3),
            413,
            "batch",
            "The batch has 3 operations, more than the 2 accepted.",
        )

    def test_empty_and_disabled_batches(self):
        self.assertRefused(post(GraphQLPolicy(), []), 400, "malformed", "empty")
        self.assertRefused(
            post(GraphQLPolicy(max_batch=0), [{"query": "{ a }"}]), 400, "batch", "not accepted"
        )

    def test_one_refused_entry_refuses_the_batch_with_one_result_per_entry(self):
        policy = GraphQLPolicy(max_depth=2)
        decision = post(policy, [{"query": "{ a }"}, {"query": nested(3)}, 5])
        body = self.assertRefused(decision, 400, "depth")
        self.assertTrue(decision.batch)
        self.assertEqual(len(body), 3)
        self.assertEqual(body[0]["errors"][0]["extensions"]["code"], "BATCH_REFUSED")
        self.assertIn("operation 1 of this batch", body[0]["errors"][0]["message"])
        self.assertIn("Query depth 3", body[1]["errors"][0]["message"])
        self.assertIn("JSON object", body[2]["errors"][0]["message"])

    def test_the_status_is_the_highest_refusal(self):
        policy = GraphQLPolicy(persisted_queries="allow")
        unknown = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}}
        decision = post(policy, [unknown, {"query": "{ a }"}])
        body = self.assertRefused(decision, 200, "persisted_query_not_found")
        self.assertEqual(body[0]["errors"][0]["message"], "PersistedQueryNotFound")
        self.assertIn(NO_STORE, decision.headers)
        decision = post(policy, [unknown, {"query": "{ a"}])
        self.assertRefused(decision, 400, "syntax")  # the reason goes with the status


class PersistedQueryTests(Harness):
    TEXT = "query Hello { hello }"

    def pq(self, digest: str, version: Any = 1) -> dict[str, Any]:
        return {"persistedQuery": {"version": version, "sha256Hash": digest}}

    def test_apq_not_found_register_found(self):
        policy = GraphQLPolicy(persisted_queries="allow")
        digest = sha(self.TEXT)
        decision = post(policy, {"extensions": self.pq(digest)})
        self.assertRefused(decision, 200, "persisted_query_not_found")
        self.assertIn(NO_STORE, decision.headers)
        self.assertEqual(
            json.loads(decision.body),
            {
                "errors": [
                    {
                        "message": "PersistedQueryNotFound",
                        "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
                    }
                ]
            },
        )
        self.assertAllowed(post(policy, {"query": self.TEXT, "extensions": self.pq(digest)}))
        decision = self.assertAllowed(
            post(policy, {"extensions": self.pq(digest.upper()), "variables": {"x": 1}})
        )
        self.assertEqual(decision.operations, (Operation("query", "Hello"),))
        self.assertEqual(
            json.loads(decision.upstream_body),
            {
                "extensions": self.pq(digest.upper()),
                "variables": {"x": 1},
                "query": self.TEXT,
            },
        )
        decision = self.assertAllowed(get(policy, extensions=self.pq(digest)))
        self.assertEqual(
            decision.upstream_query_string,
            urlencode({"extensions": json.dumps(self.pq(digest))}).encode()
            + b"&query=query%20Hello%20%7B%20hello%20%7D",
        )

    def test_apq_hash_mismatch_version_and_hash_shape(self):
        policy = GraphQLPolicy(persisted_queries="allow")
        body = self.assertRefused(
            post(policy, {"query": self.TEXT, "extensions": self.pq("a" * 64)}),
            400,
            "persisted_query_mismatch",
            "does not match",
        )
        self.assertEqual(body["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_HASH_MISMATCH")
        self.assertRefused(
            post(policy, {"query": self.TEXT, "extensions": self.pq(sha(self.TEXT), 2)}),
            400,
            "malformed",
            "version",
        )
        for bad in ("abc", "g" * 64, 5):
            self.assertRefused(
                post(policy, {"extensions": self.pq(bad)}), 400, "malformed", "sha256"
            )
        self.assertEqual(len(policy.persisted), 0)

    def test_a_refused_query_is_not_registered_and_a_known_one_is_checked_again(self):
        policy = GraphQLPolicy(persisted_queries="allow", max_depth=2)
        deep = nested(3)
        self.assertRefused(
            post(policy, {"query": deep, "extensions": self.pq(sha(deep))}), 400, "depth"
        )
        self.assertRefused(
            post(policy, {"extensions": self.pq(sha(deep))}), 200, "persisted_query_not_found"
        )
        text = "query Q($n: Int) { users(first: $n) { id } }"
        policy = GraphQLPolicy(persisted_queries="allow", max_complexity=11)
        self.assertAllowed(post(policy, {"query": text, "extensions": self.pq(sha(text))}))
        self.assertRefused(
            post(policy, {"extensions": self.pq(sha(text)), "variables": {"n": 11}}),
            400,
            "complexity",
        )

    def test_apq_memory_is_bounded(self):
        policy = GraphQLPolicy(persisted_queries="allow", persisted_cache_size=2)
        texts = ["{ a }", "{ b }", "{ c }"]
        for text in texts:
            self.assertAllowed(post(policy, {"query": text, "extensions": self.pq(sha(text))}))
        self.assertEqual(len(policy.persisted), 2)
        self.assertRefused(
            post(policy, {"extensions": self.pq(sha(texts[0]))}), 200, "persisted_query_not_found"
        )
        self.assertAllowed(post(policy, {"extensions": self.pq(sha(texts[2]))}))

    def test_off_answers_not_supported_to_a_hash_and_ignores_it_beside_a_query(self):
        policy = GraphQLPolicy()
        body = self.assertRefused(
            post(policy, {"extensions": self.pq(sha(self.TEXT))}),
            200,
            "persisted_query_not_supported",
            "PersistedQueryNotSupported",
        )
        self.assertEqual(body["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_SUPPORTED")
        self.assertAllowed(post(policy, {"query": self.TEXT, "extensions": self.pq("x")}))
        self.assertEqual(len(policy.persisted), 0)

    def test_only_accepts_allowlisted_operations(self):
        other = "{ secret }"
        policy = GraphQLPolicy(persisted_queries="only", allowlist={sha(self.TEXT): self.TEXT})
        self.assertAllowed(query(policy, self.TEXT))
        self.assertAllowed(get(policy, query=self.TEXT))
        body = self.assertRefused(query(policy, other), 403, "not_in_safelist", "not in the allow")
        self.assertEqual(body["errors"][0]["extensions"]["code"], "QUERY_NOT_IN_SAFELIST")
        decision = self.assertAllowed(post(policy, {"extensions": self.pq(sha(self.TEXT))}))
        self.assertEqual(json.loads(decision.upstream_body)["query"], self.TEXT)
        decision = post(policy, {"extensions": self.pq(sha(other))})
        body = self.assertRefused(decision, 404, "persisted_query_not_in_list", sha(other))
        self.assertEqual(body["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_IN_LIST")
        self.assertIn(NO_STORE, decision.headers)
        # Registering is not a way in.
        self.assertRefused(
            post(policy, {"query": other, "extensions": self.pq(sha(other))}),
            403,
            "not_in_safelist",
        )
        self.assertRefused(
            post(policy, {"query": other, "extensions": self.pq(sha(self.TEXT))}),
            400,
            "persisted_query_mismatch",
        )

    def test_only_needs_an_allowlist_and_modes_are_checked(self):
        self.assertRaises(ValueError, GraphQLPolicy, persisted_queries="only")
        self.assertRaises(ValueError, GraphQLPolicy, persisted_queries="sometimes")

    def test_allow_knows_the_allowlist_without_registration(self):
        policy = GraphQLPolicy(persisted_queries="allow", allowlist={sha(self.TEXT): self.TEXT})
        self.assertAllowed(post(policy, {"extensions": self.pq(sha(self.TEXT))}))
        self.assertAllowed(query(policy, "{ anything }"))


class AllowlistFileTests(SynchronousTestCase):
    KEY = "routes[1].graphql.allowlist_file"

    def write(self, data: Any) -> str:
        path = temp_file(self)
        with open(path, "w", encoding="utf-8") as f:
            f.write(data if isinstance(data, str) else json.dumps(data))
        return path

    def test_loads_hash_to_query(self):
        text = "query Hello { hello }"
        self.assertEqual(
            load_allowlist(self.write({sha(text).upper(): text}), self.KEY), {sha(text): text}
        )

    def test_errors_name_the_key(self):
        for data, expected in (
            ({"00" * 32: "{ a }"}, "is not the sha256 of its query"),
            ({sha("{ a"): "{ a"}, "Syntax Error"),
            ({sha("x"): 5}, "must be a string"),
            (["{ a }"], "must be a JSON object"),
            ("{not json", "cannot read"),
        ):
            e = self.assertRaises(ConfigError, load_allowlist, self.write(data), self.KEY)
            self.assertTrue(e.errors[0].startswith(self.KEY + ": "), e.errors)
            self.assertIn(expected, e.errors[0])
        e = self.assertRaises(ConfigError, load_allowlist, "/nonexistent.json", self.KEY)
        self.assertIn("cannot read", e.errors[0])


class CacheAndNameTests(Harness):
    def test_documents_are_parsed_once(self):
        calls = []
        real = graphql_policy._analyse
        self.patch(graphql_policy, "_analyse", lambda *a: calls.append(a[0]) or real(*a))
        policy = GraphQLPolicy()
        text = "query Q($n: Int) { users(first: $n) { id } }"
        for n in range(5):
            self.assertAllowed(query(policy, text, variables={"n": n}))
            self.assertAllowed(get(policy, query=text, variables={"n": n}))
            self.assertRefused(query(policy, "{ a"), 400, "syntax")  # refusals are cached too
        self.assertEqual(calls, [text, "{ a"])
        self.assertEqual(len(policy.documents), 2)

    def test_the_document_cache_is_bounded(self):
        policy = GraphQLPolicy(document_cache_size=3)
        for i in range(10):
            self.assertAllowed(query(policy, f"{{ a{i} }}"))
        self.assertEqual(len(policy.documents), 3)

    def test_bounded_names(self):
        policy = GraphQLPolicy(max_names=3)
        self.assertEqual(
            [policy.bounded_name(n) for n in ("A", "B", "A", "C", "D", "B", None)],
            ["A", "B", "A", "C", "other", "B", ""],
        )
        self.assertEqual(GraphQLPolicy().bounded_name("x" * 101), "other")

    def test_allowlisted_names_are_known_first(self):
        text = "query Known { a } query AlsoKnown { b }"
        policy = GraphQLPolicy(persisted_queries="only", allowlist={sha(text): text}, max_names=2)
        self.assertEqual(policy.bounded_name("Random"), "other")
        self.assertEqual(policy.bounded_name("AlsoKnown"), "AlsoKnown")
