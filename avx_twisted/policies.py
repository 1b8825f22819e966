# -*- test-case-name: tests.integration.test_transform -*-
"""A route's request policies, between its filters and the forwarder, in a fixed order:
JSON Schema validation of the body the client sent (``[routes.validate]``), header, query and
path transforms (``[routes.request]``), the GraphQL check (``[routes.graphql]``), then the
``json_*`` body transforms. Built once per route, only for routes that have one of them; each
step answers the request itself (an error) or goes on to the next, and the last calls
``proceed``. Steps that need the whole body read it with :mod:`avx_twisted.request_body`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from .errors import REFUSALS, Answer
from .filters import refuse, send_answer
from .json_transform import is_json, transform_request_body
from .request_body import read_whole, replace
from .transform import PathError, Unsafe
from .validation import is_json_content_type, parse_json, problem_body

Proceed = Callable[[], None]
_PROBLEM = [(b"Content-Type", b"application/problem+json"), (b"Cache-Control", b"no-store")]
_GRAPHQL = (b"Content-Type", b"application/graphql-response+json")


class RequestPolicies:
    """The request policies of one route (any may be None)."""

    def __init__(self, route: Any) -> None:
        self.name = route.name
        self.metrics = route.metrics
        self.max_body_bytes = route.max_body_bytes
        validate = route.validate
        self.validate = validate if validate is not None and validate.request_compiled else None
        self.rules = route.request_rules
        self.graphql = route.graphql
        self.json_rules = route.request_json

    def __bool__(self) -> bool:
        return bool(self.validate or self.rules or self.graphql or self.json_rules)

    def run(self, request: Any, ctx: Any, proceed: Proceed) -> None:
        validate = self.validate
        if validate is not None and request.method.decode("latin-1") in validate.methods:
            if not is_json_content_type(request.fields.get(b"content-type")):
                refuse(request, ctx, 415, "a JSON body is expected")
                return
            read_whole(request, validate.max_bytes).addCallback(
                self._validated, request, ctx, proceed
            )
            return
        self._transform(request, ctx, proceed)

    def _validated(
        self, result: Tuple[Optional[int], bytes], request: Any, ctx: Any, proceed: Proceed
    ) -> None:
        """The body the client sent, checked against the route's schema (RFC 9457 400)."""
        status, body = result
        if _answered(request, ctx, status):
            return
        document, problem = parse_json(body)
        if problem is not None:
            _problem(request, ctx, "invalid JSON", [], problem)
            return
        problems = self.validate.request_compiled.validate(document)  # type: ignore[union-attr]
        if problems:
            if self.metrics is not None:
                self.metrics.validation_failure("request").inc()
            _problem(request, ctx, "request body does not match the schema", problems)
            return
        replace(request, body)
        self._transform(request, ctx, proceed)

    def _transform(self, request: Any, ctx: Any, proceed: Proceed) -> None:
        # The target as routed (and stripped of an API key); the plugins run after this.
        rules = self.rules
        if rules is not None:
            try:
                ctx.upstream_target = rules.apply(request, ctx, ctx.upstream_target)
            except (Unsafe, PathError) as e:
                ctx.error = str(e)
                refuse(request, ctx, 400, "bad request")
                return
        if self.graphql is None:
            self._body(request, ctx, proceed)
        elif request.method != b"POST":
            self._graphql((None, b""), request, ctx, proceed)
        else:
            read_whole(request, self.max_body_bytes).addCallback(
                self._graphql, request, ctx, proceed
            )

    def _graphql(
        self, result: Tuple[Optional[int], bytes], request: Any, ctx: Any, proceed: Proceed
    ) -> None:
        """GraphQL over HTTP: the operation checked before the upstream sees it."""
        status, body = result
        if _answered(request, ctx, status):
            return
        policy = self.graphql
        decision = policy.check(
            request.method, request.fields.get(b"content-type"), request.query, body or None
        )
        operations = decision.operations
        if operations:
            first = operations[0]
            ctx.graphql = f"{first.type} {first.name or ''}".rstrip()
            if ctx.trace is not None:
                ctx.trace.annotate(
                    graphql__operation__type=first.type, graphql__operation__name=first.name
                )
        if self.metrics is not None:
            outcome = "allowed" if decision.allowed else decision.reason or "refused"
            for operation in operations or (None,):
                kind = operation.type if operation is not None else "unknown"
                name = policy.bounded_name(operation.name) if operation is not None else ""
                self.metrics.graphql_operation(
                    kind, name if decision.allowed else "", outcome
                ).inc()
        if not decision.allowed:
            ctx.error = f"graphql: {decision.reason}"
            fields = [_GRAPHQL, *decision.headers]
            send_answer(Answer(decision.status, fields, decision.body), request, ctx)
            return
        if request.method == b"POST":
            replace(request, decision.upstream_body or body)
        elif decision.upstream_query_string is not None:
            path = ctx.upstream_target.partition(b"?")[0]
            ctx.upstream_target = path + b"?" + decision.upstream_query_string
        self._body(request, ctx, proceed)

    def _body(self, request: Any, ctx: Any, proceed: Proceed) -> None:
        rules = self.json_rules
        if rules is None or not request.body.present:
            proceed()
        elif not is_json(request.fields.get(b"content-type")):
            proceed()
        else:
            transform_request_body(request, rules).addCallback(
                self._body_changed, request, ctx, proceed
            )

    def _body_changed(
        self, result: Tuple[Optional[int], Optional[str]], request: Any, ctx: Any, proceed: Proceed
    ) -> None:
        status, skipped = result
        if _answered(request, ctx, status):
            return
        if skipped and self.metrics is not None:
            self.metrics.json_skipped("request", skipped).inc()
        proceed()


def _answered(request: Any, ctx: Any, status: Optional[int]) -> bool:
    """After a body was read: the client went away, or the body itself is answered (413,
    408, ...)."""
    if request.finished:
        return True
    if status is not None:
        refuse(request, ctx, status, REFUSALS.get(status, "bad request"))
        return True
    return False


def _problem(request: Any, ctx: Any, title: str, problems: Any, detail: Any = None) -> None:
    """A 400 with an RFC 9457 ``application/problem+json`` body (validation)."""
    ctx.error = title
    body = problem_body(400, title, list(problems), ctx.request_id.decode(), detail=detail)
    send_answer(Answer(400, list(_PROBLEM), body, title), request, ctx)
