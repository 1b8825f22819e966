"""GraphQL routes through the real gateway in front of a real GraphQL server (graphql-core's
execution): allowed operations reach it, refused ones never do, and what was asked shows in
the metrics and the access log."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest_twisted

from tests.support.graphql_upstream import SDL, graphql_upstream
from tests.support.servers import gateway, http

ensure = pytest_twisted.ensureDeferred


def graphql_gateway(closer: Any, tmp_path: Any, **settings: Any) -> tuple[Any, Any, str]:
    up, resource = graphql_upstream()
    closer.add(up)
    service = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "routes": [
                {
                    "path": "/graphql",
                    "name": "gql",
                    "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
                    "graphql": settings,
                }
            ],
        }
    )
    closer.add(service)
    return service, resource, f"http://127.0.0.1:{service.ports[0].getHost().port}/graphql"


async def post(url: str, payload: Any, content_type: str = "application/json") -> tuple[int, Any]:
    response = await http(
        "POST", url, data=json.dumps(payload).encode(), headers={"Content-Type": [content_type]}
    )
    return response.code, json.loads(await response.content())


@ensure
async def test_queries_reach_the_server_and_deep_ones_do_not(closer, tmp_path):
    gw, resource, url = graphql_gateway(closer, tmp_path, max_depth=3)
    status, body = await post(url, {"query": 'query Hi { hello(name: "avx") }'})
    assert status == 200 and body["data"]["hello"]
    before = resource.count
    deep = "{ users { friends { friends { friends { name } } } } }"
    status, body = await post(url, {"query": deep})
    assert status == 400
    assert "depth" in body["errors"][0]["message"].lower()
    assert resource.count == before  # never reached the upstream


@ensure
async def test_get_queries_and_mutations_over_get(closer, tmp_path):
    gw, resource, url = graphql_gateway(closer, tmp_path)
    response = await http("GET", f"{url}?query={quote('{ hello }')}")
    assert response.code == 200
    assert json.loads(await response.content())["data"]["hello"]
    mutation = 'mutation { addPost(authorId: "1", title: "t") { id } }'
    response = await http("GET", f"{url}?query={quote(mutation)}")
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"POST"]
    await response.content()


@ensure
async def test_introspection_can_be_refused_and_schemas_validated(closer, tmp_path):
    schema = tmp_path / "schema.graphql"
    schema.write_text(SDL)
    gw, resource, url = graphql_gateway(
        closer, tmp_path, introspection=False, schema_file=str(schema)
    )
    status, body = await post(url, {"query": "{ __schema { types { name } } }"})
    assert status == 400
    status, body = await post(url, {"query": "{ nosuchfield }"})
    assert status == 400 and "nosuchfield" in body["errors"][0]["message"]
    status, body = await post(url, {"query": "{ __typename hello }"})
    assert status == 200


@ensure
async def test_persisted_queries_apq(closer, tmp_path):
    import hashlib

    gw, resource, url = graphql_gateway(closer, tmp_path, persisted_queries="allow")
    query = "{ hello }"
    digest = hashlib.sha256(query.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    status, body = await post(url, {"extensions": extensions})
    assert status == 200 and body["errors"][0]["message"] == "PersistedQueryNotFound"
    status, body = await post(url, {"query": query, "extensions": extensions})
    assert status == 200 and body["data"]["hello"]
    status, body = await post(url, {"extensions": extensions})  # the gateway supplies it now
    assert status == 200 and body["data"]["hello"]


@ensure
async def test_metrics_name_the_operation_and_the_refusal(closer, tmp_path):
    gw, resource, url = graphql_gateway(closer, tmp_path, max_complexity=20)
    await post(url, {"query": "query Greeting { hello }", "operationName": "Greeting"})
    await post(url, {"query": "query Many { users(first: 100) { friends(first: 100) { name } } }"})
    base = url.rsplit("/", 1)[0]
    response = await http("GET", f"{base}/metrics")
    text = (await response.content()).decode()
    allowed = 'name="Greeting",result="allowed",route="gql",type="query"'
    assert f"avx_graphql_operations_total{{{allowed}}} 1.0" in text
    assert 'result="complexity"' in text
