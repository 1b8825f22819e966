"""The GraphQL test upstream (:mod:`tests.support.graphql_upstream`) serves real queries over a
socket, GET and POST, batches, a mutation, the spec's statuses, and counts what it served; and
what :class:`~avx_twisted.graphql_policy.GraphQLPolicy` lets through (a persisted query it
supplies the text of, included) executes on it."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlencode

import pytest_twisted

from avx_twisted.graphql_policy import GraphQLPolicy
from tests.support.graphql_upstream import graphql_upstream
from tests.support.servers import http

ensure = pytest_twisted.ensureDeferred
JSON = {"Content-Type": ["application/json"]}
MODERN = {"Accept": ["application/graphql-response+json"]}


def started(closer: Any) -> tuple[str, Any]:
    up, resource = graphql_upstream()
    closer.add(up)
    return up.url + "/graphql", resource


async def post(url: str, data: Any, headers: Any = JSON) -> tuple[int, Any]:
    response = await http("POST", url, data=json.dumps(data).encode(), headers=headers)
    return response.code, json.loads(await response.content())


async def get(url: str, **params: str) -> tuple[int, Any, Any]:
    response = await http("GET", f"{url}?{urlencode(params)}", headers=MODERN)
    return response.code, response.headers, json.loads(await response.content())


@ensure
async def test_post_runs_nested_queries_with_first_and_variables(closer):
    url, resource = started(closer)
    query = "query Q($n: Int) { users(first: $n) { name friends(first: 1) { id } } }"
    status, result = await post(url, {"query": query, "variables": {"n": 2}})
    assert status == 200
    assert result == {
        "data": {
            "users": [
                {"name": "user1", "friends": [{"id": "2"}]},
                {"name": "user2", "friends": [{"id": "3"}]},
            ]
        }
    }
    assert resource.count == 1


@ensure
async def test_get_runs_a_query_and_refuses_a_mutation_with_405(closer):
    url, resource = started(closer)
    status, _, result = await get(url, query='{ hello(name: "get") }')
    assert (status, result) == (200, {"data": {"hello": "hello get"}})
    status, headers, result = await get(
        url, query='mutation { addPost(authorId: "1", title: "x") { id } }'
    )
    assert status == 405
    assert headers.getRawHeaders(b"allow") == [b"POST"]
    assert resource.count == 2


@ensure
async def test_mutation_batch_and_invalid_documents(closer):
    url, resource = started(closer)
    status, result = await post(
        url,
        [
            {"query": 'mutation { addPost(authorId: "2", title: "new") { id author { name } } }'},
            {"query": '{ posts(first: 1, after: "10") { title } }'},
        ],
    )
    assert status == 200
    assert result == [
        {"data": {"addPost": {"id": "11", "author": {"name": "user2"}}}},
        {"data": {"posts": [{"title": "new"}]}},
    ]
    status, result = await post(url, {"query": "{ nope }"}, headers={**JSON, **MODERN})
    assert status == 400
    assert "nope" in result["errors"][0]["message"]
    status, result = await post(url, {"query": "{ nope }"})
    assert status == 200  # application/json: 200 for validation errors, as the spec says
    assert resource.count == 3


@ensure
async def test_what_the_policy_lets_through_runs_upstream(closer):
    url, resource = started(closer)
    policy = GraphQLPolicy(persisted_queries="allow")
    query = '{ user(id: "3") { name posts(first: 1) { title } } }'
    digest = hashlib.sha256(query.encode()).hexdigest()
    pq = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    registered = policy.check(
        b"POST", b"application/json", b"", json.dumps({"query": query, "extensions": pq}).encode()
    )
    assert registered.allowed and registered.upstream_body is None
    decision = policy.check(b"GET", None, urlencode({"extensions": json.dumps(pq)}).encode(), None)
    assert decision.allowed
    response = await http("GET", f"{url}?{decision.upstream_query_string.decode()}")
    result = json.loads(await response.content())
    assert result == {"data": {"user": {"name": "user3", "posts": [{"title": "post 5"}]}}}
    decision = policy.check(
        b"POST",
        b"application/json",
        b"",
        json.dumps([{"extensions": pq}, {"query": "{ hello }"}]).encode(),
    )
    assert decision.allowed and decision.batch
    response = await http("POST", url, data=decision.upstream_body, headers=JSON)
    result = json.loads(await response.content())
    assert result[0]["data"]["user"]["name"] == "user3"
    assert result[1] == {"data": {"hello": "hello world"}}
    assert resource.count == 2
