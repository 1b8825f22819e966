# -*- test-case-name: tests.unit.test_graphql_policy -*-
"""GraphQL edge policy (``[routes.graphql]``): decide, before the upstream, whether one GraphQL
over HTTP request may pass, and say which operations it carries (for metrics, logs and spans).

Pure: no I/O on the request path (the SDL and the allowlist are read at load by
:func:`load_schema_sdl` and :func:`load_allowlist`); :meth:`GraphQLPolicy.check` takes the
method, Content-Type, query string and body and returns a :class:`Decision`. Parsing is
graphql-core's; parsed and analysed documents are cached by the sha256 of the query text.

Refusals carry a GraphQL-shaped body ``{"errors":[{"message": ...}]}`` and the status the
GraphQL-over-HTTP spec gives for ``application/graphql-response+json`` (Apollo Server answers the
same for ``application/json``, so one status for both):

- 400: the request is not well formed (bad JSON, NaN, ``variables`` not an object, a GET with
  a body, a POST with GraphQL parameters in its query string, duplicate parameters or keys: all
  things gateway and upstream could read differently) or the document does not pass: syntax
  (graphql-core's message and location), the limits (depth with fragments expanded, aliases,
  root fields, tokens, complexity), fragment cycles, introspection when it is off (a validation
  rule, as in Apollo), schema validation, the operation selection rules, a persisted-query hash
  that does not match its query.
- 405 with ``Allow: POST``: a mutation or subscription over GET (the spec: GET is for queries);
  405 with ``Allow: GET, POST`` for any other method.
- 415: a POST whose media type is not ``application/json`` (or whose charset is not UTF-8).
- 413: a batch of more than ``max_batch`` operations: the request is well formed but larger
  than the route accepts (RFC 9110 §15.5.14); batching is not in the spec, and 413 tells the
  client to split, where 400 would say the request is wrong. An empty batch is 400.
- 200 ``PersistedQueryNotFound`` / ``PersistedQueryNotSupported`` (``extensions.code``
  ``PERSISTED_QUERY_NOT_FOUND`` / ``PERSISTED_QUERY_NOT_SUPPORTED``, with Apollo Server's
  ``Cache-Control: private, no-cache, must-revalidate``): Apollo's APQ answers (Apollo Server 4
  sends them with 200), on which its clients retry with the full query (``allow``) or stop using
  APQ (``off``: a hash alone could otherwise carry a query the gateway never saw).
- With ``persisted_queries = "only"``, as the Apollo Router's safelisting: 403
  ``QUERY_NOT_IN_SAFELIST`` for a query text that is not in the allowlist (understood, well
  formed, refused by policy) and 404 ``PERSISTED_QUERY_NOT_IN_LIST`` (not cacheable) for a hash
  that is not in it.

In a batch, a refusal of the whole request (bad JSON, too many operations) is one error object;
when some operations are refused, the body is an array with one result per operation (the
refused ones carry their errors, the others say they were not executed), as batching clients
expect, and the status is the highest of the refusals.

Costs: graphql-core parses at roughly 10 µs per token on CPython 3.11 and 3 µs on PyPy, so a
query at ``max_tokens = 10000`` costs about 250 ms (CPython) or 25 ms (PyPy) the first time;
documents are cached by hash (``document_cache_size``), after which a typical query (77 tokens,
a fragment, a variable ``first``) costs about 12-18 µs per check on either interpreter. Query
text longer than ``CHARS_PER_TOKEN`` characters per token of the budget is refused before it is
lexed (whitespace and comments cost the lexer as much as tokens).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qsl, quote

from graphql import GraphQLSchema, GraphQLSyntaxError, build_schema, parse, validate
from graphql.language import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    Lexer,
    OperationDefinitionNode,
    SelectionSetNode,
    Source,
    TokenKind,
    VariableNode,
)
from graphql.type import validate_schema

from avx_twisted._configmodel import ConfigError

__all__ = [
    "Decision",
    "GraphQLPolicy",
    "Operation",
    "load_allowlist",
    "load_schema_sdl",
]

PERSISTED_MODES = ("off", "allow", "only")
#: Arguments whose integer value multiplies the complexity of a field's selection.
MULTIPLIERS = frozenset(("first", "last", "limit"))
#: Characters of query text accepted per token of ``max_tokens``: whitespace and comments cost
#: the lexer (a Python loop per character) as much as tokens do, so they are bounded too.
CHARS_PER_TOKEN = 32
#: The largest multiplier counted: a bigger ``first`` is refused as well, and products of
#: multipliers stay numbers CPython can print.
HUGE = 10**18
MEDIA_TYPE = b"application/graphql-response+json; charset=utf-8"

_INTROSPECTION = frozenset(("__schema", "__type"))
_GET_PARAMS = (b"query", b"operationName", b"variables", b"extensions")
_HEX = frozenset("0123456789abcdef")
# Apollo Server's header on persisted-query errors: a cache keeping "not found" for a GET would
# answer it after the query was registered.
_NO_STORE = ((b"Cache-Control", b"private, no-cache, must-revalidate"),)

# graphql-core 3.2.x grew its parser limits over patch releases: pick what this one has.
_PARSE_PARAMS = inspect.signature(parse).parameters
_TOKEN_LIMIT = (
    "lexical"
    if "max_lexical_tokens" in _PARSE_PARAMS
    else "tokens"
    if "max_tokens" in _PARSE_PARAMS
    else "lexer"
)


@dataclass(frozen=True)
class Operation:
    """One operation of the request: ``type`` is query, mutation or subscription."""

    type: str
    name: Optional[str]


@dataclass(frozen=True)
class Decision:
    """What :meth:`GraphQLPolicy.check` decided.

    Allowed: ``operations`` lists the operations (one per batch entry); ``upstream_body`` or
    ``upstream_query_string``, when not None, replace what the upstream gets (a persisted query
    the gateway knew the text of). Refused: ``status``, ``headers`` and ``body`` are the answer
    to send, ``reason`` a short fixed code for metrics (``depth``, ``syntax``, ...)."""

    allowed: bool
    operations: Tuple[Operation, ...] = ()
    status: int = 200
    body: bytes = b""
    headers: Tuple[Tuple[bytes, bytes], ...] = ()
    reason: str = ""
    batch: bool = False
    upstream_body: Optional[bytes] = None
    upstream_query_string: Optional[bytes] = None


class _Refused(Exception):
    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        code: str = "BAD_REQUEST",
        locations: Optional[List[Dict[str, int]]] = None,
        headers: Tuple[Tuple[bytes, bytes], ...] = (),
        more: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = headers
        error: Dict[str, Any] = {"message": message}
        if locations:
            error["locations"] = locations
        error["extensions"] = {"code": code}
        self.errors = [error] + [{"message": m, "extensions": {"code": code}} for m in more]


class _LRU:
    """A bounded mapping forgetting the least recently used key."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


# ---------------------------------------------------------------------------------------------
# Loading (at start-up and reload: errors are ConfigError with the key path)
# ---------------------------------------------------------------------------------------------


def load_schema_sdl(path: str, key: str) -> GraphQLSchema:
    """Read and build the SDL at ``path``; a missing file, bad SDL or an invalid schema is a
    :class:`ConfigError` naming ``key``."""
    try:
        with open(path, encoding="utf-8") as f:
            sdl = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{key}: cannot read {path}: {e}"]) from None
    try:
        schema = build_schema(sdl)
    except GraphQLSyntaxError as e:
        raise ConfigError([f"{key}: {path}: {_one_line(e.message, e.locations)}"]) from None
    except (TypeError, ValueError) as e:  # graphql-core's errors for unknown types and the like
        raise ConfigError([f"{key}: {path}: {e}"]) from None
    errors = validate_schema(schema)
    if errors:
        raise ConfigError([f"{key}: {path}: {e.message}" for e in errors])
    return schema


def load_allowlist(path: str, key: str) -> Dict[str, str]:
    """Read the allowlist at ``path``: a JSON object of sha256 hex (of the query text, UTF-8)
    to query. Keys that are not that hash and queries that do not parse are errors naming
    ``key``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError([f"{key}: cannot read {path}: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{key}: {path}: must be a JSON object of sha256 hex to query"])
    errors: List[str] = []
    allowlist: Dict[str, str] = {}
    for digest, query in data.items():
        if not isinstance(query, str):
            errors.append(f"{key}: {path}: {digest!r}: the query must be a string")
            continue
        actual = hashlib.sha256(query.encode("utf-8")).hexdigest()
        if digest.lower() != actual:
            errors.append(f"{key}: {path}: {digest!r} is not the sha256 of its query ({actual})")
            continue
        try:
            parse(query, no_location=True)
        except GraphQLSyntaxError as e:
            errors.append(f"{key}: {path}: {digest!r}: {_one_line(e.message, e.locations)}")
            continue
        allowlist[actual] = query
    if errors:
        raise ConfigError(errors)
    return allowlist


def _one_line(message: str, locations: Any) -> str:
    if locations:
        return f"{message} (line {locations[0].line}, column {locations[0].column})"
    return message


# ---------------------------------------------------------------------------------------------
# Documents: parsed once, analysed once, cached by the sha256 of their text
# ---------------------------------------------------------------------------------------------


class _Cost:
    """A complexity that variables drive: ``constant`` plus, per term, the selection's cost
    times the largest of its literal factor and the values of its variables."""

    __slots__ = ("constant", "terms")

    def __init__(self, constant: int, terms: List[Tuple[int, Tuple[str, ...], Any]]) -> None:
        self.constant = constant
        self.terms = terms


class _Document:
    """A parsed document and all that does not depend on the request, per operation: its
    :class:`Operation`, depth, aliases and root fields (fragments expanded), its complexity
    (an int, or a :class:`_Cost` when variables drive a multiplier) and variable defaults.
    ``refusal`` is set instead when the document itself is refused."""

    __slots__ = (
        "document",
        "operations",
        "infos",
        "fragments",
        "introspection",
        "shapes",
        "costs",
        "defaults",
        "dynamic",
        "refusal",
        "validated",
    )

    def __init__(self) -> None:
        self.document: Optional[DocumentNode] = None
        self.operations: List[OperationDefinitionNode] = []
        self.infos: List[Operation] = []
        self.fragments: Dict[str, FragmentDefinitionNode] = {}
        self.introspection = False
        self.shapes: List[Tuple[int, int, int]] = []
        self.costs: List[Any] = []  # int or _Cost
        self.defaults: List[Dict[str, int]] = []
        self.dynamic: List[_Cost] = []  # fragments' variable costs, each after those it spreads
        self.refusal: Optional[_Refused] = None
        self.validated: Optional[Union[_Refused, bool]] = None


def _parse(query: str, max_tokens: Optional[int]) -> DocumentNode:
    if max_tokens is None:
        return parse(query)
    if _TOKEN_LIMIT == "lexical":
        return parse(query, max_lexical_tokens=max_tokens, max_comments=max_tokens)
    if _TOKEN_LIMIT == "tokens":
        return parse(query, max_tokens=max_tokens)
    _count_tokens(query, max_tokens)
    return parse(query)


def _count_tokens(query: str, limit: int) -> None:
    """Lex ``query``, stopping at ``limit`` tokens (for a graphql-core without parser limits)."""
    lexer = Lexer(Source(query))
    n = 0
    while lexer.advance().kind != TokenKind.EOF:
        n += 1
        if n > limit:
            raise GraphQLSyntaxError(
                lexer.source,
                lexer.token.start,
                f"Document contains more than {limit} tokens. Parsing aborted.",
            )


def _analyse(query: str, max_tokens: Optional[int]) -> _Document:
    doc = _Document()
    try:
        document = _parse(query, max_tokens)
    except GraphQLSyntaxError as e:
        message = e.message
        reason = (
            "tokens"
            if "Parsing aborted" in message and "nested" not in message
            else "depth"
            if "nested too deeply" in message
            else "syntax"
        )
        locations = [{"line": loc.line, "column": loc.column} for loc in e.locations or ()]
        doc.refusal = _Refused(400, reason, message, "GRAPHQL_PARSE_FAILED", locations)
        return doc
    doc.document = document
    spreads: Dict[str, List[str]] = {}
    op_spreads: List[str] = []
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            doc.operations.append(definition)
        elif isinstance(definition, FragmentDefinitionNode):
            name = definition.name.value
            if name in doc.fragments:
                return _invalid(doc, f'There can be only one fragment named "{name}".')
            doc.fragments[name] = definition
        else:
            return _invalid(
                doc,
                "Only operations and fragments may be sent: the document "
                f"has a {definition.kind.replace('_', ' ')}.",
            )
        used = _scan(definition.selection_set, doc)
        if isinstance(definition, FragmentDefinitionNode):
            spreads[definition.name.value] = used
        else:
            op_spreads.extend(used)
    for target in op_spreads + [t for used in spreads.values() for t in used]:
        if target not in doc.fragments:
            return _invalid(doc, f'Unknown fragment "{target}".')
    order: List[str] = []
    cycle = _order_fragments(spreads, order)
    if cycle:
        return _invalid(doc, f'Cannot spread fragment "{cycle}" within itself.', "fragment_cycle")
    shapes: Dict[str, Tuple[int, int, int]] = {}
    costs: Dict[str, Any] = {}
    for name in order:
        selection_set = doc.fragments[name].selection_set
        shapes[name] = _shape(selection_set, shapes)
        cost = costs[name] = _compile_cost(selection_set, costs)
        if isinstance(cost, _Cost):
            doc.dynamic.append(cost)
    for op in doc.operations:
        doc.infos.append(Operation(op.operation.value, None if op.name is None else op.name.value))
        doc.shapes.append(_shape(op.selection_set, shapes))
        doc.costs.append(_compile_cost(op.selection_set, costs))
        doc.defaults.append(
            {
                d.variable.name.value: _integer(d.default_value.value)
                for d in op.variable_definitions or ()
                if isinstance(d.default_value, IntValueNode)
            }
        )
    return doc


def _invalid(doc: _Document, message: str, reason: str = "validation") -> _Document:
    doc.refusal = _Refused(400, reason, message, "GRAPHQL_VALIDATION_FAILED")
    return doc


def _scan(selection_set: SelectionSetNode, doc: _Document) -> List[str]:
    """The fragments spread under ``selection_set``; notes introspection on ``doc``."""
    used: List[str] = []
    stack = [selection_set]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FieldNode):
                if selection.name.value in _INTROSPECTION:
                    doc.introspection = True
                if selection.selection_set is not None:
                    stack.append(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                stack.append(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                used.append(selection.name.value)
    return used


def _order_fragments(spreads: Mapping[str, List[str]], order: List[str]) -> Optional[str]:
    """Fill ``order`` with the fragments, each after those it spreads (an iterative depth-first
    search: a chain of a thousand fragments must not exhaust the stack); return the name of a
    fragment on a cycle, if there is one."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    for root in spreads:
        if root in state:
            continue
        state[root] = 1
        path = [(root, iter(spreads[root]))]
        while path:
            name, children = path[-1]
            for child in children:
                seen = state.get(child)
                if seen == 1:
                    return child
                if seen is None:
                    state[child] = 1
                    path.append((child, iter(spreads[child])))
                    break
            else:
                state[name] = 2
                order.append(name)
                path.pop()
    return None


def _shape(
    selection_set: SelectionSetNode, memo: Mapping[str, Tuple[int, int, int]]
) -> Tuple[int, int, int]:
    """(depth, aliased fields, fields at this level) of a selection set, fragments expanded."""
    depth = aliases = fields = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            fields += 1
            if selection.alias is not None:
                aliases += 1
            if selection.selection_set is None:
                depth = max(depth, 1)
            else:
                d, a, _ = _shape(selection.selection_set, memo)
                depth = max(depth, d + 1)
                aliases += a
            continue
        if isinstance(selection, InlineFragmentNode):
            d, a, f = _shape(selection.selection_set, memo)
        else:
            d, a, f = memo[selection.name.value]
        depth = max(depth, d)
        aliases += a
        fields += f
    return depth, aliases, fields


def _compile_cost(selection_set: SelectionSetNode, fragments: Mapping[str, Any]) -> Any:
    """Each field counts 1; a ``first``/``last``/``limit`` integer (literal, or a variable's
    value: then the result is a :class:`_Cost` to evaluate per request) multiplies the cost of
    the field's selection."""
    constant = 0
    terms: List[Tuple[int, Tuple[str, ...], Any]] = []
    for selection in selection_set.selections:
        names: Tuple[str, ...] = ()
        factor = 1
        if isinstance(selection, FieldNode):
            constant += 1
            if selection.selection_set is None:
                continue
            for argument in selection.arguments or ():
                if argument.name.value in MULTIPLIERS:
                    value = argument.value
                    if isinstance(value, IntValueNode):
                        factor = max(factor, _integer(value.value))
                    elif isinstance(value, VariableNode):
                        names += (value.name.value,)
            child = _compile_cost(selection.selection_set, fragments)
        elif isinstance(selection, InlineFragmentNode):
            child = _compile_cost(selection.selection_set, fragments)
        else:
            child = fragments[selection.name.value]
        if names or isinstance(child, _Cost):
            terms.append((factor, names, child))
        else:
            constant += factor * child
    return _Cost(constant, terms) if terms else constant


def _integer(text: str) -> int:
    """An integer literal, at most :data:`HUGE` (CPython refuses to convert 4300 digits)."""
    return HUGE if len(text) > 18 else min(int(text), HUGE)


def _evaluate(cost: Any, values: Mapping[str, Any], known: Dict[int, int]) -> int:
    """The value of a compiled cost for these variables; fragments' costs are in ``known``."""
    if not isinstance(cost, _Cost):
        return cost  # type: ignore[no-any-return]
    total = known.get(id(cost))
    if total is not None:
        return total
    total = cost.constant
    for factor, names, child in cost.terms:
        for name in names:
            value = values.get(name)
            if type(value) is int and value > factor:  # not bool: type(True) is bool
                factor = min(value, HUGE)
        total += factor * _evaluate(child, values, known)
    known[id(cost)] = total
    return total


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------


class GraphQLPolicy:
    """One route's GraphQL policy, built once at load from plain settings; ``None`` for a limit
    means no limit. ``max_batch = 0`` refuses batches. With ``persisted_queries = "allow"`` an
    ``allowlist`` (if given) is also a set of hashes the policy knows without registration.
    State (the document cache, remembered APQ queries, names seen) is per policy and per
    process, used from the reactor thread only."""

    def __init__(
        self,
        *,
        max_depth: Optional[int] = 12,
        max_aliases: Optional[int] = 30,
        max_root_fields: Optional[int] = 20,
        max_tokens: Optional[int] = 10000,
        max_complexity: Optional[int] = 5000,
        introspection: bool = True,
        persisted_queries: str = "off",
        allowlist: Optional[Mapping[str, str]] = None,
        schema: Optional[GraphQLSchema] = None,
        max_batch: int = 10,
        document_cache_size: int = 1000,
        persisted_cache_size: int = 10000,
        max_names: int = 100,
    ) -> None:
        if persisted_queries not in PERSISTED_MODES:
            raise ValueError(f"persisted_queries must be one of {PERSISTED_MODES}")
        if persisted_queries == "only" and not allowlist:
            raise ValueError('persisted_queries = "only" needs an allowlist')
        self.max_depth = max_depth
        self.max_aliases = max_aliases
        self.max_root_fields = max_root_fields
        self.max_tokens = max_tokens
        self.max_complexity = max_complexity
        self.introspection = introspection
        self.persisted_queries = persisted_queries
        self.allowlist: Dict[str, str] = {k.lower(): v for k, v in (allowlist or {}).items()}
        self.schema = schema
        self.max_batch = max_batch
        self.max_chars = None if max_tokens is None else max_tokens * CHARS_PER_TOKEN
        self.documents = _LRU(document_cache_size)
        self.persisted = _LRU(persisted_cache_size)
        self.max_names = max_names
        self._names: set[str] = set()
        for query in self.allowlist.values():
            for op in _analyse(query, None).operations:
                if op.name is not None:
                    self.bounded_name(op.name.value)

    def bounded_name(self, name: Optional[str]) -> str:
        """The operation name as a metrics label: the first ``max_names`` distinct names (of
        at most 100 characters; in ``only`` mode the allowlist's names come first) are kept,
        later ones are ``other``; an anonymous operation is ``""``. Names come from clients,
        so call it for allowed operations only: refused ones would fill the set."""
        if name is None:
            return ""
        if name in self._names:
            return name
        if len(self._names) < self.max_names and len(name) <= 100:
            self._names.add(name)
            return name
        return "other"

    def check(
        self,
        method: bytes,
        content_type: Optional[bytes],
        query_string: bytes,
        body: Optional[bytes],
    ) -> Decision:
        """Decide on one request; never raises for anything a client can send."""
        operations: List[Operation] = []
        try:
            if method == b"POST":
                if query_string and self._get_params(query_string):
                    # Some servers (express-graphql) prefer these to the body's: the upstream
                    # could run what the gateway never checked.
                    raise _Refused(400, "malformed", "GraphQL parameters of a POST go in its body.")
                return self._post(content_type, body, operations)
            if method == b"GET":
                if body:
                    raise _Refused(400, "malformed", "A GraphQL GET request has no body.")
                return self._get(query_string, operations)
            raise _Refused(
                405,
                "method",
                "GraphQL requests are GET or POST.",
                headers=((b"Allow", b"GET, POST"),),
            )
        except _Refused as refused:
            refused.__traceback__ = None  # documents keep theirs: no request's frames with them
            return _refusal(refused, operations)

    # -- the two ways in -----------------------------------------------------------------

    def _post(
        self, content_type: Optional[bytes], body: Optional[bytes], operations: List[Operation]
    ) -> Decision:
        media, _, params = (content_type or b"").partition(b";")
        if media.strip().lower() != b"application/json":
            raise _Refused(415, "content_type", "POST a GraphQL request as application/json.")
        charset = params.strip().lower()
        if charset and charset not in (b"charset=utf-8", b'charset="utf-8"'):
            raise _Refused(415, "content_type", "A GraphQL request is UTF-8 JSON.")
        if not body:
            raise _Refused(400, "malformed", "The request body is empty.")
        try:
            data = _JSON.decode(body.decode("utf-8"))
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, duplicates
            raise _Refused(400, "malformed", "The request body is not valid JSON.")
        if isinstance(data, dict):
            supplied = self._operation(data, False, operations)
            if supplied is None:
                return Decision(True, tuple(operations))
            upstream_body = _dumps(dict(data, query=supplied))
            return Decision(True, tuple(operations), upstream_body=upstream_body)
        if not isinstance(data, list):
            raise _Refused(400, "malformed", "A GraphQL request is a JSON object.")
        if not data:
            raise _Refused(400, "malformed", "The batch is empty.")
        if self.max_batch == 0:
            raise _Refused(400, "batch", "Batched requests are not accepted here.")
        if len(data) > self.max_batch:
            raise _Refused(
                413,
                "batch",
                f"The batch has {len(data)} operations, more than the {self.max_batch} accepted.",
            )
        return self._batch(data, operations)

    def _batch(self, data: List[Any], operations: List[Operation]) -> Decision:
        results: List[Optional[_Refused]] = []
        supplied: List[Optional[str]] = []
        for entry in data:
            try:
                if not isinstance(entry, dict):
                    raise _Refused(400, "malformed", "Each batched request is a JSON object.")
                supplied.append(self._operation(entry, False, operations))
                results.append(None)
            except _Refused as refused:
                refused.__traceback__ = None
                supplied.append(None)
                results.append(refused)
        refusals = [r for r in results if r is not None]
        if refusals:
            worst = max(refusals, key=lambda r: r.status)
            first = results.index(refusals[0])
            skipped = [
                {
                    "message": f"Not executed: operation {first} of this batch was refused.",
                    "extensions": {"code": "BATCH_REFUSED"},
                }
            ]
            body = _dumps([{"errors": r.errors if r else skipped} for r in results])
            headers = ((b"Content-Type", MEDIA_TYPE),)
            for r in refusals:
                headers += tuple(h for h in r.headers if h not in headers)
            return Decision(
                False, tuple(operations), worst.status, body, headers, worst.reason, True
            )
        upstream_body = None
        if any(q is not None for q in supplied):
            upstream_body = _dumps(
                [entry if q is None else dict(entry, query=q) for entry, q in zip(data, supplied)]
            )
        return Decision(True, tuple(operations), batch=True, upstream_body=upstream_body)

    @staticmethod
    def _get_params(query_string: bytes) -> Dict[bytes, str]:
        """The GraphQL parameters of a query string (a parameter given twice is refused: the
        gateway and the upstream could each read another one)."""
        params: Dict[bytes, str] = {}
        try:
            pairs = parse_qsl(query_string, keep_blank_values=True, max_num_fields=256)
            for key, value in pairs:
                if key in _GET_PARAMS:
                    if key in params:
                        raise _Refused(400, "malformed", f"{key.decode()} is given twice.")
                    params[key] = value.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise _Refused(400, "malformed", "The query string is not valid.")
        return params

    def _get(self, query_string: bytes, operations: List[Operation]) -> Decision:
        params = self._get_params(query_string)
        data: Dict[str, Any] = {
            "query": params.get(b"query"),
            "operationName": params.get(b"operationName"),
        }
        for key in (b"variables", b"extensions"):
            if key in params:
                try:
                    data[key.decode()] = _JSON.decode(params[key])
                except (ValueError, RecursionError):
                    raise _Refused(400, "malformed", f"{key.decode()} is not valid JSON.")
        supplied = self._operation(data, True, operations)
        if supplied is None:
            return Decision(True, tuple(operations))
        extra = b"query=" + quote(supplied, safe="").encode("ascii")
        rewritten = query_string + b"&" + extra if query_string else extra
        return Decision(True, tuple(operations), upstream_query_string=rewritten)

    # -- one operation -------------------------------------------------------------------

    def _operation(
        self, data: Mapping[str, Any], get: bool, operations: List[Operation]
    ) -> Optional[str]:
        """Check one request object; return the query the upstream must get instead of none
        (a persisted query known by hash), or None."""
        query = data.get("query")
        name = data.get("operationName")
        variables = data.get("variables")
        extensions = data.get("extensions")
        if query is not None and not isinstance(query, str):
            raise _Refused(400, "malformed", "query must be a string.")
        if name is not None and not isinstance(name, str):
            raise _Refused(400, "malformed", "operationName must be a string.")
        if variables is not None and not isinstance(variables, dict):
            raise _Refused(400, "malformed", "variables must be a JSON object.")
        if extensions is not None and not isinstance(extensions, dict):
            raise _Refused(400, "malformed", "extensions must be a JSON object.")
        persisted = extensions.get("persistedQuery") if extensions else None
        digest = None
        supplied = None
        if query is not None:
            if self.max_chars is not None and len(query) > self.max_chars:
                raise _Refused(
                    400,
                    "tokens",
                    f"The query is longer than {self.max_chars} characters.",
                    "GRAPHQL_PARSE_FAILED",
                )
            try:
                digest = hashlib.sha256(query.encode("utf-8")).hexdigest()
            except UnicodeEncodeError:
                raise _Refused(400, "malformed", "query is not valid Unicode.")
        if persisted is not None and (self.persisted_queries != "off" or query is None):
            wanted = self._persisted_hash(persisted)
            if query is None:
                query = supplied = self._known(wanted)
                digest = wanted
            elif wanted != digest:
                raise _Refused(
                    400,
                    "persisted_query_mismatch",
                    "provided sha does not match query",
                    "PERSISTED_QUERY_HASH_MISMATCH",
                )
        if query is None:
            raise _Refused(400, "malformed", "The request has no query.")
        if self.persisted_queries == "only" and digest not in self.allowlist:
            raise _Refused(
                403,
                "not_in_safelist",
                "This operation is not in the allowlist of this route.",
                "QUERY_NOT_IN_SAFELIST",
            )
        self._check_document(query, digest, name, variables, get, operations)
        if persisted is not None and self.persisted_queries == "allow" and supplied is None:
            self.persisted.put(digest, query)  # type: ignore[arg-type]
        return supplied

    def _persisted_hash(self, persisted: Any) -> str:
        if self.persisted_queries == "off":
            raise _Refused(
                200,
                "persisted_query_not_supported",
                "PersistedQueryNotSupported",
                "PERSISTED_QUERY_NOT_SUPPORTED",
                headers=_NO_STORE,
            )
        if not isinstance(persisted, dict) or persisted.get("version") != 1:
            raise _Refused(400, "malformed", "Unsupported persisted query version.")
        wanted = persisted.get("sha256Hash")
        if not isinstance(wanted, str) or len(wanted) != 64 or not _HEX.issuperset(wanted.lower()):
            raise _Refused(400, "malformed", "persistedQuery.sha256Hash must be a sha256 hex.")
        return wanted.lower()

    def _known(self, digest: str) -> str:
        query = self.allowlist.get(digest)
        if query is None and self.persisted_queries == "allow":
            query = self.persisted.get(digest)
        if query is not None:
            return query
        if self.persisted_queries == "only":
            raise _Refused(
                404,
                "persisted_query_not_in_list",
                f"Persisted query '{digest}' not found in the persisted query list",
                "PERSISTED_QUERY_NOT_IN_LIST",
                headers=_NO_STORE,
            )
        raise _Refused(
            200,
            "persisted_query_not_found",
            "PersistedQueryNotFound",
            "PERSISTED_QUERY_NOT_FOUND",
            headers=_NO_STORE,
        )

    def _check_document(
        self,
        query: str,
        digest: str,
        name: Optional[str],
        variables: Optional[Mapping[str, Any]],
        get: bool,
        operations: List[Operation],
    ) -> None:
        doc = self.documents.get(digest)
        if doc is None:
            doc = _analyse(query, self.max_tokens)
            self.documents.put(digest, doc)
        if doc.refusal is not None:
            raise doc.refusal
        if doc.introspection and not self.introspection:
            raise _Refused(
                400,
                "introspection",
                "GraphQL introspection is not allowed here.",
                "GRAPHQL_VALIDATION_FAILED",
            )
        index = _select(doc.operations, name)
        info = doc.infos[index]
        operations.append(info)
        if get and info.type != "query":
            raise _Refused(
                405,
                "method",
                f"A {info.type} cannot be sent with GET: use POST.",
                headers=((b"Allow", b"POST"),),
            )
        depth, aliases, roots = doc.shapes[index]
        _limit("depth", "Query depth", depth, self.max_depth)
        _limit("aliases", "Aliased fields", aliases, self.max_aliases)
        _limit("root_fields", "Root fields", roots, self.max_root_fields)
        if self.max_complexity is not None:
            cost = doc.costs[index]
            if isinstance(cost, _Cost):
                defaults = doc.defaults[index]
                values = (
                    {**defaults, **variables} if defaults and variables else (variables or defaults)
                )
                known: Dict[int, int] = {}
                for fragment in doc.dynamic:
                    known[id(fragment)] = _evaluate(fragment, values, known)
                cost = _evaluate(cost, values, known)
            _limit("complexity", "Query complexity", cost, self.max_complexity)
        if self.schema is not None:
            if doc.validated is None:
                errors = validate(self.schema, doc.document, max_errors=10)  # type: ignore[arg-type]
                doc.validated = (
                    True
                    if not errors
                    else _Refused(
                        400,
                        "validation",
                        errors[0].message,
                        "GRAPHQL_VALIDATION_FAILED",
                        [
                            {"line": loc.line, "column": loc.column}
                            for loc in errors[0].locations or ()
                        ],
                        more=[e.message for e in errors[1:]],
                    )
                )
            if doc.validated is not True:
                raise doc.validated  # type: ignore[misc]


def _select(ops: Sequence[OperationDefinitionNode], name: Optional[str]) -> int:
    if name is not None:
        for i, op in enumerate(ops):
            if op.name is not None and op.name.value == name:
                return i
        raise _Refused(400, "operation", f'Unknown operation named "{name}".')
    if len(ops) == 1:
        return 0
    if not ops:
        raise _Refused(400, "operation", "Must provide an operation.")
    raise _Refused(
        400, "operation", "Must provide operation name if query contains multiple operations."
    )


def _limit(reason: str, what: str, value: int, limit: Optional[int]) -> None:
    if limit is not None and value > limit:
        shown = value if value < HUGE else f"over {HUGE}"
        raise _Refused(
            400,
            reason,
            f"{what} {shown} exceeds the limit of {limit}.",
            "GRAPHQL_VALIDATION_FAILED",
        )


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate key")
    return data


# Duplicate keys are refused (the gateway and the upstream could each read another one), and
# NaN and Infinity, which are not JSON.
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _refusal(refused: _Refused, operations: List[Operation]) -> Decision:
    return Decision(
        False,
        tuple(operations),
        refused.status,
        _dumps({"errors": refused.errors}),
        ((b"Content-Type", MEDIA_TYPE),) + refused.headers,
        refused.reason,
    )
