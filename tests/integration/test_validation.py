"""JSON Schema validation through the real gateway: the official JSON-Schema-Test-Suite's
draft 2020-12 cases (the same selection as tests/unit/test_json_schema_suite.py) driven through
routes, one per case; the upstream sees only valid bodies; the refusal is RFC 9457."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from tests.support.servers import FnResource, gateway, http, upstream
from tests.unit.test_json_schema_suite import _cases, _is_excluded, _suite_files

ensure = pytest_twisted.ensureDeferred


def origin(closer: Any) -> Any:
    def render(request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if request.path == b"/bad-response":
            return b'{"id": "not a number"}'
        return b'{"ok": true}'

    resource = FnResource(render)
    up = closer.add(upstream(resource))
    up.resource = resource
    return up


@ensure
async def test_the_official_suite_through_routes(closer, tmp_path):
    up = origin(closer)
    routes = []
    expected = []
    for name in _suite_files():
        for case in _cases(name):
            if _is_excluded(name, case["description"]):
                continue
            index = len(routes)
            schema = tmp_path / f"case{index}.json"
            schema.write_text(json.dumps(case["schema"]))
            routes.append(
                {
                    "path": f"/case/{index}",
                    "name": f"case{index}",
                    "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
                    "validate": {"request_schema": str(schema)},
                }
            )
            for test in case["tests"]:
                expected.append(
                    (
                        index,
                        test["data"],
                        test["valid"],
                        f"{name}: {case['description']}: {test['description']}",
                    )
                )
    service = gateway({"server": {"host": "127.0.0.1", "port": 0}, "routes": routes})
    closer.add(service)
    base = f"http://127.0.0.1:{service.ports[0].getHost().port}"
    wrong = []
    for index, data, valid, what in expected:
        response = await http(
            "POST",
            f"{base}/case/{index}",
            data=json.dumps(data).encode(),
            headers={"Content-Type": ["application/json"]},
        )
        await response.content()
        if (response.code == 200) != valid:
            wrong.append(f"{what}: got {response.code}")
    assert not wrong, "\n".join(wrong[:20])
    assert len(expected) > 1000
    # The upstream saw exactly the valid ones.
    assert len(up.resource.seen) == sum(1 for _, _, valid, _ in expected if valid)


@ensure
async def test_refusals_are_problem_details_and_other_content_types_415(closer, tmp_path):
    up = origin(closer)
    schema = tmp_path / "user.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["email"],
                "properties": {"email": {"type": "string"}, "age": {"type": "integer"}},
            }
        )
    )
    service = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "routes": [
                {
                    "path": "/users",
                    "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
                    "validate": {"request_schema": str(schema), "max_bytes": 100},
                }
            ],
        }
    )
    closer.add(service)
    url = f"http://127.0.0.1:{service.ports[0].getHost().port}/users"
    response = await http(
        "POST", url, data=b'{"age": "secret-value"}', headers={"Content-Type": ["application/json"]}
    )
    body = await response.content()
    assert response.code == 400
    assert response.headers.getRawHeaders(b"content-type") == [b"application/problem+json"]
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["request_id"]
    locations = {(e["instanceLocation"], e["keyword"]) for e in problem["errors"]}
    assert ("", "required") in locations and ("/age", "type") in locations
    assert b"secret-value" not in body  # instance values are never echoed
    response = await http(
        "POST", url, data=b"{oops", headers={"Content-Type": ["application/json"]}
    )
    assert response.code == 400
    await response.content()
    response = await http("POST", url, data=b"email=x", headers={"Content-Type": ["text/plain"]})
    assert response.code == 415
    await response.content()
    response = await http(
        "POST",
        url,
        data=b'{"email": "' + b"x" * 200 + b'"}',
        headers={"Content-Type": ["application/json"]},
    )
    assert response.code == 413
    await response.content()
    response = await http("GET", url)  # not a validated method
    assert response.code == 200
    await response.content()
    assert len(up.resource.seen) == 1


@ensure
async def test_response_schema_only_monitors(closer, tmp_path):
    up = origin(closer)
    schema = tmp_path / "out.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"id": {"type": "integer"}}}))
    service = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "routes": [
                {
                    "path": "/*",
                    "name": "monitored",
                    "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
                    "validate": {"response_schema": str(schema)},
                }
            ],
        }
    )
    closer.add(service)
    base = f"http://127.0.0.1:{service.ports[0].getHost().port}"
    response = await http("GET", f"{base}/bad-response")
    assert response.code == 200
    assert await response.content() == b'{"id": "not a number"}'  # passed, never blocked
    response = await http("GET", f"{base}/metrics")
    text = (await response.content()).decode()
    assert 'avx_validation_failures_total{direction="response",route="monitored"} 1.0' in text
