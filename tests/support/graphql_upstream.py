"""A real GraphQL upstream for integration tests: graphql-core's own validation and execution
behind a small ``twisted.web`` resource speaking GraphQL over HTTP (GET for queries, POST with
``application/json``, JSON-array batches), on a small in-memory schema with nested types, lists
taking ``first``, and a mutation. It counts the requests it serves, so a test can prove the
gateway refused something before it got here."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from graphql import (
    GraphQLError,
    GraphQLSchema,
    build_schema,
    execute,
    parse,
    validate,
)
from graphql.language import OperationDefinitionNode
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.support.servers import Upstream, upstream

__all__ = ["SDL", "GraphQLResource", "graphql_upstream", "make_schema"]

SDL = """\
type Query {
  hello(name: String): String!
  user(id: ID!): User
  users(first: Int = 10): [User!]!
  posts(first: Int, after: ID): [Post!]!
}

type Mutation {
  addPost(authorId: ID!, title: String!): Post!
}

type User {
  id: ID!
  name: String!
  friends(first: Int): [User!]!
  posts(first: Int): [Post!]!
}

type Post {
  id: ID!
  title: String!
  author: User!
}
"""


class _Store:
    """Five users, each the friend of the next two, with two posts each."""

    def __init__(self) -> None:
        self.users = [{"id": str(i), "name": f"user{i}"} for i in range(1, 6)]
        self.posts = [
            {"id": str(n), "title": f"post {n}", "author": str((n - 1) // 2 + 1)}
            for n in range(1, 11)
        ]

    def user(self, uid: str) -> Optional[Dict[str, Any]]:
        return next((u for u in self.users if u["id"] == uid), None)


def _take(items: List[Any], first: Optional[int]) -> List[Any]:
    return items if first is None else items[: max(first, 0)]


def make_schema(store: Optional[_Store] = None) -> GraphQLSchema:
    """The SDL with resolvers over an in-memory store (a fresh one unless given)."""
    store = store or _Store()
    schema = build_schema(SDL)

    def friends(user: Dict[str, Any], info: Any, first: Optional[int] = None) -> List[Any]:
        i = int(user["id"])
        ids = [(i % 5) + 1, ((i + 1) % 5) + 1]
        return _take([store.user(str(n)) for n in ids], first)

    def user_posts(user: Dict[str, Any], info: Any, first: Optional[int] = None) -> List[Any]:
        return _take([p for p in store.posts if p["author"] == user["id"]], first)

    def add_post(root: Any, info: Any, authorId: str, title: str) -> Dict[str, Any]:
        if store.user(authorId) is None:
            raise GraphQLError(f"no user {authorId}")
        post = {"id": str(len(store.posts) + 1), "title": title, "author": authorId}
        store.posts.append(post)
        return post

    query = schema.query_type
    query.fields["hello"].resolve = lambda root, info, name="world": f"hello {name}"
    query.fields["user"].resolve = lambda root, info, id: store.user(id)
    query.fields["users"].resolve = lambda root, info, first=10: _take(store.users, first)
    query.fields["posts"].resolve = lambda root, info, first=None, after=None: _take(
        [p for p in store.posts if after is None or int(p["id"]) > int(after)], first
    )
    schema.mutation_type.fields["addPost"].resolve = add_post
    schema.type_map["User"].fields["friends"].resolve = friends
    schema.type_map["User"].fields["posts"].resolve = user_posts
    schema.type_map["Post"].fields["author"].resolve = lambda post, info: store.user(post["author"])
    return schema


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, allow: Optional[bytes] = None) -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow


class GraphQLResource(Resource):
    """GraphQL over HTTP on every path. ``count`` is the number of requests received and
    ``seen`` their method, query string and body."""

    isLeaf = True

    def __init__(self, schema: Optional[GraphQLSchema] = None) -> None:
        super().__init__()
        self.schema = schema or make_schema()
        self.count = 0
        self.seen: List[Dict[str, Any]] = []

    def render(self, request: Request) -> bytes:
        self.count += 1
        body = request.content.read() if request.content is not None else b""
        query_string = request.uri.partition(b"?")[2]
        self.seen.append({"method": request.method, "query_string": query_string, "body": body})
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        modern = "application/graphql-response+json" in accept
        request.setHeader(
            b"Content-Type",
            b"application/graphql-response+json" if modern else b"application/json",
        )
        try:
            if request.method == b"GET":
                args = {k.decode(): v[0].decode() for k, v in request.args.items()}
                params = self._params(args, from_query_string=True)
                status, result = self._run(params, get=True, modern=modern)
            elif request.method == b"POST":
                ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
                if ctype.lower() != b"application/json":
                    raise _BadRequest(415, "POST application/json")
                try:
                    data = json.loads(body)
                except ValueError:
                    raise _BadRequest(400, "body is not JSON")
                if isinstance(data, list):
                    runs = [self._run(self._params(d), get=False, modern=modern) for d in data]
                    status, result = 200, [r for _, r in runs]
                else:
                    status, result = self._run(self._params(data), get=False, modern=modern)
            else:
                raise _BadRequest(405, "GET or POST", b"GET, POST")
        except _BadRequest as e:
            request.setResponseCode(e.status)
            if e.allow:
                request.setHeader(b"Allow", e.allow)
            return json.dumps({"errors": [{"message": str(e)}]}).encode()
        request.setResponseCode(status)
        return json.dumps(result).encode()

    @staticmethod
    def _params(data: Any, from_query_string: bool = False) -> Dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("query"), str):
            raise _BadRequest(400, "a request needs a query")
        params = dict(data)
        if from_query_string and "variables" in params:
            try:
                params["variables"] = json.loads(params["variables"])
            except ValueError:
                raise _BadRequest(400, "variables is not JSON")
        return params

    def _run(self, params: Dict[str, Any], get: bool, modern: bool) -> tuple[int, Any]:
        """(status, result) per the spec: 400 for a document that does not parse or validate
        when the client accepts application/graphql-response+json, 200 otherwise."""
        bad = 400 if modern else 200
        try:
            document = parse(params["query"])
        except GraphQLError as e:
            return bad, {"errors": [e.formatted]}
        errors = validate(self.schema, document)
        if errors:
            return bad, {"errors": [e.formatted for e in errors]}
        name = params.get("operationName")
        if get:
            ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            op = next((o for o in ops if name is None or (o.name and o.name.value == name)), None)
            if op is not None and op.operation.value != "query":
                raise _BadRequest(405, "only queries over GET", b"POST")
        result = execute(
            self.schema, document, variable_values=params.get("variables"), operation_name=name
        )
        out: Dict[str, Any] = {}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        if result.data is not None or not result.errors:
            out["data"] = result.data
        return (200 if result.data is not None else bad), out


def graphql_upstream(schema: Optional[GraphQLSchema] = None) -> tuple[Upstream, GraphQLResource]:
    """Start a :class:`GraphQLResource` on an ephemeral loopback port (this test's reactor)."""
    resource = GraphQLResource(schema)
    return upstream(resource), resource
