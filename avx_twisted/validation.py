# -*- test-case-name: tests.unit.test_validation -*-
"""JSON Schema validation of request and response bodies (``[routes.validate]``).

:func:`load_schema` compiles a route's ``request_schema``/``response_schema`` once, at load: the
draft is picked by ``$schema`` (7, 2019-09 or 2020-12; 2020-12 when absent), the schema is
checked against its metaschema, and every ``$ref`` is resolved there and then -- to the schema's
own ``$defs``/anchors/embedded ``$id`` resources, to the bundled metaschemas, or to JSON files
under the schema's directory. A remote (``http(s)://``) reference is never fetched and a path
climbing out of the directory is never read: both are a :class:`ConfigError`. Validation
(:meth:`CompiledSchema.validate`) is therefore pure: no file or network I/O per request.

:class:`Problem` messages are built from the failing keyword and the schema, never from the
instance: jsonschema's own messages quote the value that failed, which would echo request data
(secrets, personal data) into answers and logs.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import jsonschema.exceptions
import referencing.exceptions
from jsonschema.validators import Draft7Validator, Draft201909Validator, Draft202012Validator
from jsonschema_specifications import REGISTRY as _METASCHEMAS
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7, DRAFT201909, DRAFT202012, Specification

from avx_twisted._configmodel import ConfigError

__all__ = [
    "MAX_DEPTH",
    "MAX_PROBLEMS",
    "VALIDATION_PROBLEM_TYPE",
    "CompiledSchema",
    "Problem",
    "is_json_content_type",
    "load_schema",
    "parse_json",
    "problem_body",
]

MAX_PROBLEMS = 50
"""At most this many problems are reported for one instance (the most relevant ones)."""

MAX_DEPTH = 32
"""Default bound on an instance's nesting (arrays/objects inside one another) before validation.

jsonschema validates recursively: an attacker's deeply nested body would otherwise exhaust the
stack -- a clean ``RecursionError`` on CPython, but on PyPy a stack overflow inside a C extension
(rpds, under cpyext) kills the process, at about 100 levels with a recursive schema."""

_MAX_SCANNED = 500
"""Errors collected (in document order, then ranked) before the list is cut to
:data:`MAX_PROBLEMS`: a huge invalid array costs this many errors, not one per item."""

VALIDATION_PROBLEM_TYPE = "urn:avx-gateway:problem:validation"
"""The RFC 9457 ``type`` of a body that failed schema validation (a stable, non-fetchable URI)."""

_MAX_SHOWN = 80
"""Schema values (``enum``, ``const``, ``pattern``...) quoted in a message are cut to this."""


@dataclass(frozen=True)
class _Draft:
    name: str
    validator: Any  # a jsonschema Validator class
    specification: Specification[Any]
    ref_keywords: tuple[str, ...]


_DRAFT7 = _Draft("draft 7", Draft7Validator, DRAFT7, ("$ref",))
_DRAFT201909 = _Draft("draft 2019-09", Draft201909Validator, DRAFT201909, ("$ref",))
_DRAFT202012 = _Draft("draft 2020-12", Draft202012Validator, DRAFT202012, ("$ref", "$dynamicRef"))

_DRAFTS: dict[str, _Draft] = {
    "http://json-schema.org/draft-07/schema": _DRAFT7,
    "https://json-schema.org/draft/2019-09/schema": _DRAFT201909,
    "https://json-schema.org/draft/2020-12/schema": _DRAFT202012,
}


@dataclass(frozen=True)
class Problem:
    """One way an instance fails its schema, safe to show the client and to log.

    ``instance_location`` is a JSON pointer (RFC 6901) into the instance ("" for the root);
    ``keyword`` is the schema keyword that failed; ``message`` never contains instance values.
    """

    instance_location: str
    keyword: str
    message: str


class _Refused(Exception):
    """A ``$ref`` target we do not retrieve, or could not read (the reason is the message)."""


class CompiledSchema:
    """A schema compiled at load with every reference resolved; :meth:`validate` does no I/O."""

    def __init__(self, path: str, draft: str, validator: Any, max_depth: int = MAX_DEPTH) -> None:
        self.path = path
        self.draft = draft
        self.max_depth = max_depth
        self._validator = validator

    def __repr__(self) -> str:
        return f"<CompiledSchema {self.path!r} ({self.draft})>"

    def is_valid(self, instance: Any) -> bool:
        """Whether ``instance`` satisfies the schema (an instance too deep to check does not)."""
        return not self.validate(instance)

    def validate(self, instance: Any) -> list[Problem]:
        """Every way ``instance`` fails the schema, most relevant first, at most
        :data:`MAX_PROBLEMS`; an empty list when it is valid. An instance nested deeper than
        ``max_depth`` is not validated: it has the one problem ``maxDepth``."""
        if _deeper_than(instance, self.max_depth):
            return [Problem("", "maxDepth", f"is nested deeper than {self.max_depth} levels")]
        try:
            errors = list(itertools.islice(self._validator.iter_errors(instance), _MAX_SCANNED))
        except RecursionError:
            return [Problem("", "maxDepth", "is nested too deeply to be validated")]
        except referencing.exceptions.Unresolvable:  # pragma: no cover - resolved at load
            return [Problem("", "$ref", "a schema reference could not be resolved")]
        if not errors:
            return []
        seen: dict[tuple[Any, ...], int] = {}
        ranked = [(_rank(error), _problem(error, seen)) for error in errors]
        ranked.sort(key=lambda pair: pair[0])  # stable: ties stay in document order
        return [problem for _, problem in ranked[:MAX_PROBLEMS]]


def _deeper_than(instance: Any, limit: int) -> bool:
    """Whether arrays/objects nest more than ``limit`` deep in ``instance`` (no recursion)."""
    if not isinstance(instance, (dict, list)):
        return False
    stack = [(instance, 1)]
    while stack:
        value, depth = stack.pop()
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_schema(path: str, config_key: str, *, max_depth: int = MAX_DEPTH) -> CompiledSchema:
    """Read, check and compile the JSON Schema in ``path`` (``config_key`` names it in errors).

    Raises :class:`ConfigError` (one line per problem, ``"{config_key}: {path}: why"``) for a
    file that cannot be read or is not JSON, an unsupported ``$schema``, a schema invalid against
    its metaschema, or a ``$ref`` that is remote, leaves the schema's directory, or points nowhere.
    """

    def fail(*whys: str) -> ConfigError:
        return ConfigError([_one_line(f"{config_key}: {path}: {why}") for why in whys])

    abs_path = os.path.abspath(path)
    root_dir = os.path.realpath(os.path.dirname(abs_path))
    root_uri = _file_uri(abs_path)
    try:
        contents = _read_json(abs_path)
        draft = _draft_of(contents, _DRAFT202012)
        _check_schema(draft, contents)
    except _Refused as e:
        raise fail(str(e))

    loaded: dict[str, Resource[Any]] = {}
    pending: list[tuple[str, Resource[Any]]] = []

    def retrieve(uri: str) -> Resource[Any]:
        if uri in loaded:
            return loaded[uri]
        resource = _retrieve_local(uri, root_dir, draft)
        loaded[uri] = resource
        pending.append((uri, resource))
        return resource

    root = Resource(contents=contents, specification=draft.specification)
    registry: Registry[Any] = Registry(retrieve=retrieve)
    registry = registry.with_resources([(root_uri, root), *_METASCHEMAS.items()])
    problems: list[str] = []
    _check_refs(
        root, _resolver_in(registry, root_uri, root), draft, os.path.basename(abs_path), problems
    )
    while pending:
        uri, resource = pending.pop(0)
        where = os.path.relpath(url2pathname(urlsplit(uri).path), root_dir)
        _check_refs(resource, _resolver_in(registry, uri, resource), draft, where, problems)
    if problems:
        raise fail(*dict.fromkeys(problems))

    # The registry the validator uses holds everything already read and retrieves nothing.
    final: Registry[Any] = Registry().with_resources(
        [(root_uri, root), *loaded.items(), *_METASCHEMAS.items()]
    )
    validator = draft.validator(_rooted(contents, root, root_uri, draft), registry=final.crawl())
    return CompiledSchema(path, draft.name, validator, max_depth)


def _rooted(contents: Any, root: Resource[Any], root_uri: str, draft: _Draft) -> Any:
    """The root schema with an absolute base URI, so relative references resolve against the
    file (or against its own ``$id``, itself made absolute against the file)."""
    canonical = urldefrag(urljoin(root_uri, root.id() or ""))[0]
    if not isinstance(contents, dict):
        return contents
    if draft is _DRAFT7 and ("$ref" in contents or str(contents.get("$id", "")).startswith("#")):
        # Draft 7 ignores every keyword beside $ref, and ``"$id": "#name"`` is an anchor there:
        # enter the (unchanged) root through a reference instead.
        return {"$ref": canonical}
    return {**contents, "$id": canonical}


def _file_uri(path: str) -> str:
    from pathlib import Path

    return Path(path).as_uri()


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise _Refused(f"cannot read the schema: {e.strerror or e}")
    value, error = parse_json(raw)
    if error is not None:
        raise _Refused(f"not a JSON schema: {error}")
    if not isinstance(value, (dict, bool)):
        raise _Refused("not a JSON schema: a schema is a JSON object or a boolean")
    return value


def _draft_of(contents: Any, default: _Draft) -> _Draft:
    if not isinstance(contents, dict) or "$schema" not in contents:
        return default
    dialect = contents["$schema"]
    if not isinstance(dialect, str):
        raise _Refused("$schema must be a string")
    draft = _DRAFTS.get(dialect.rstrip("#"))
    if draft is None:
        raise _Refused(
            f"unsupported $schema {_shown(dialect)} (supported: draft 7, 2019-09 and 2020-12)"
        )
    return draft


def _check_schema(draft: _Draft, contents: Any) -> None:
    try:
        draft.validator.check_schema(contents)
    except jsonschema.exceptions.SchemaError as e:
        where = _pointer(e.absolute_path)
        raise _Refused(f"invalid {draft.name} schema at {where or '/'}: {_short(e.message, 160)}")


def _retrieve_local(uri: str, root_dir: str, draft: _Draft) -> Resource[Any]:
    """The JSON file ``uri`` names, if it is a ``file:`` URI under ``root_dir``; else refused."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        raise _Refused("remote references are not fetched (only files beside the schema)")
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise _Refused("not found in the schema (references may name local files and $defs)")
    target = os.path.realpath(url2pathname(parts.path))
    if os.path.commonpath([root_dir, target]) != root_dir:
        raise _Refused(f"resolves outside the schema's directory {root_dir}")
    contents = _read_json(target)
    file_draft = _draft_of(contents, draft)
    _check_schema(file_draft, contents)
    return Resource(contents=contents, specification=file_draft.specification)


def _resolver_in(registry: Registry[Any], uri: str, resource: Resource[Any]) -> Any:
    """A resolver for ``resource``, retrieved from ``uri``, whose own ``$id`` may rebase it."""
    return registry.resolver(uri).in_subresource(resource)


def _check_refs(
    resource: Resource[Any], resolver: Any, draft: _Draft, where: str, problems: list[str]
) -> None:
    """Resolve every reference in ``resource`` (recursively through its subschemas) now."""
    contents = resource.contents
    if isinstance(contents, dict):
        for keyword in draft.ref_keywords:
            ref = contents.get(keyword)
            if not isinstance(ref, str):
                continue
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable as e:
                target = _retrieved_uri(e)
                if target is None or target.startswith("file:") or target == urldefrag(ref)[0]:
                    shown = _shown(ref)
                else:  # say where a relative reference under a remote ``$id`` leads
                    shown = f"{_shown(ref)} ({target})"
                problems.append(f"{keyword} {shown} in {where}: {_unresolvable_reason(e)}")
    for sub in resource.subresources():
        _check_refs(sub, resolver.in_subresource(sub), draft, where, problems)


def _retrieved_uri(error: BaseException) -> Optional[str]:
    """The absolute URI a failed lookup tried to retrieve, if it got that far."""
    cause: Optional[BaseException] = error
    while cause is not None:
        if isinstance(cause, referencing.exceptions.Unretrievable):
            return str(cause.ref)
        cause = cause.__cause__
    return None


def _unresolvable_reason(error: BaseException) -> str:
    cause: Optional[BaseException] = error
    while cause is not None:
        if isinstance(cause, _Refused):
            return str(cause)
        cause = cause.__cause__
    if isinstance(error, referencing.exceptions.PointerToNowhere):
        return "the JSON pointer leads nowhere in its document"
    if isinstance(error, referencing.exceptions.NoSuchAnchor):
        return "no such anchor in its document"
    return "cannot be resolved"


# ---------------------------------------------------------------------------------------------
# Problems: location, keyword and a message built from the schema only
# ---------------------------------------------------------------------------------------------


def _rank(error: Any) -> tuple[int, bool, bool]:
    """Most relevant first: shallower in the instance, then a specific keyword before a weak
    one (``anyOf``/``oneOf``, as jsonschema's ``best_match`` weighs them)."""
    keyword = error.validator
    return (
        len(error.path),
        keyword in jsonschema.exceptions.WEAK_MATCHES,
        keyword not in jsonschema.exceptions.STRONG_MATCHES,
    )


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _shown(value: Any, limit: int = _MAX_SHOWN) -> str:
    """A schema value quoted in a message: JSON, cut to ``limit`` characters."""
    if isinstance(value, str):
        text = "'" + value + "'"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            text = "<value>"
    return _short(text, limit)


def _short(text: str, limit: int) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _missing_in_order(error: Any) -> list[str]:
    """For the keywords that yield one error per missing property: those properties, in the
    order jsonschema reports them (``required``, ``dependentRequired``, array ``dependencies``)."""
    instance, value = error.instance, error.validator_value
    if not isinstance(instance, dict):
        return []
    if error.validator == "required":
        return [p for p in value if p not in instance]
    out = []
    for prop, needed in value.items():
        if prop in instance and isinstance(needed, list):
            out.extend(f"{n}\0{prop}" for n in needed if n not in instance)
    return out


def _problem(error: Any, seen: dict[tuple[Any, ...], int]) -> Problem:
    keyword = error.validator
    location = _pointer(error.absolute_path)
    if keyword is None:  # a ``false`` schema
        return Problem(location, "false", "is not allowed here (the schema is false)")
    keyword = str(keyword)
    value = error.validator_value
    if keyword in ("required", "dependentRequired", "dependencies"):
        group = (location, keyword, tuple(error.absolute_schema_path))
        index = seen.get(group, 0)
        seen[group] = index + 1
        missing = _missing_in_order(error)
        if index < len(missing):
            name, _, because = missing[index].partition("\0")
            if because:
                return Problem(
                    location,
                    keyword,
                    f"property {_shown(name)} is required when {_shown(because)} is present",
                )
            return Problem(location, keyword, f"required property {_shown(name)} is missing")
        return Problem(location, keyword, "a required property is missing")
    builder = _MESSAGES.get(keyword)
    if builder is not None:
        return Problem(location, keyword, builder(value, error))
    return Problem(location, keyword, f"does not satisfy {_shown(keyword)}")


def _type_message(value: Any, error: Any) -> str:
    types = value if isinstance(value, list) else [value]
    return "is not of type " + ", ".join(_shown(t) for t in types)


def _one_of_message(value: Any, error: Any) -> str:
    if error.context:
        return "does not match any of the schemas in 'oneOf'"
    return "matches more than one of the schemas in 'oneOf'"


def _contains_message(value: Any, error: Any) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "maxContains" in schema and error.message.startswith("Too many"):
        return f"has more than {schema['maxContains']} items matching 'contains'"
    least = schema.get("minContains", 1)
    return f"has fewer than {least} item{'s' if least != 1 else ''} matching 'contains'"


_MESSAGES: dict[str, Callable[[Any, Any], str]] = {
    "type": _type_message,
    "enum": lambda v, e: f"is not one of {_shown(v)}",
    "const": lambda v, e: f"is not the constant {_shown(v)}",
    "minLength": lambda v, e: f"is shorter than {v} characters",
    "maxLength": lambda v, e: f"is longer than {v} characters",
    "pattern": lambda v, e: f"does not match the pattern {_shown(v)}",
    "format": lambda v, e: f"is not a valid {_shown(v)}",
    "minimum": lambda v, e: f"is less than the minimum of {v}",
    "maximum": lambda v, e: f"is greater than the maximum of {v}",
    "exclusiveMinimum": lambda v, e: f"is less than or equal to the exclusive minimum of {v}",
    "exclusiveMaximum": lambda v, e: f"is greater than or equal to the exclusive maximum of {v}",
    "multipleOf": lambda v, e: f"is not a multiple of {v}",
    "minItems": lambda v, e: f"has fewer than {v} items",
    "maxItems": lambda v, e: f"has more than {v} items",
    "uniqueItems": lambda v, e: "has duplicate items",
    "contains": _contains_message,
    "minContains": _contains_message,
    "maxContains": _contains_message,
    "minProperties": lambda v, e: f"has fewer than {v} properties",
    "maxProperties": lambda v, e: f"has more than {v} properties",
    "additionalProperties": lambda v, e: "has properties the schema does not allow",
    "unevaluatedProperties": lambda v, e: "has properties the schema does not allow",
    "additionalItems": lambda v, e: "has more items than the schema allows",
    "items": lambda v, e: "has more items than the schema allows",
    "unevaluatedItems": lambda v, e: "has more items than the schema allows",
    "propertyNames": lambda v, e: "has a property name the schema does not allow",
    "anyOf": lambda v, e: "does not match any of the schemas in 'anyOf'",
    "oneOf": _one_of_message,
    "allOf": lambda v, e: "does not match all of the schemas in 'allOf'",
    "not": lambda v, e: "matches the schema in 'not'",
    "if": lambda v, e: "does not match the 'if' condition's branch",
    "then": lambda v, e: "matches 'if' but not 'then'",
    "else": lambda v, e: "does not match 'if' nor 'else'",
}


# ---------------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> tuple[Any, Optional[str]]:
    """Parse a body as strict JSON (RFC 8259): ``(value, None)``, or ``(None, why)``.

    UTF-8 only (no byte order mark, no UTF-16/32 guessing), no ``NaN``/``Infinity``; duplicate
    keys are allowed, the last one winning. ``why`` never quotes the body.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"the body is not UTF-8 (invalid byte at offset {e.start})"
    if text.startswith("\ufeff"):
        return None, "the body starts with a byte order mark (JSON text must not)"
    try:
        return json.loads(text, parse_constant=_refuse_constant), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError as e:  # NaN/Infinity, or an integer over the interpreter's digit limit
        return None, f"invalid JSON: {_short(str(e), 120)}"


def problem_body(
    status: int,
    title: str,
    problems: list[Problem],
    request_id: str,
    *,
    detail: Optional[str] = None,
    type_uri: Optional[str] = None,
) -> bytes:
    """An RFC 9457 ``application/problem+json`` document for a refused request.

    ``type`` is :data:`VALIDATION_PROBLEM_TYPE` when there are ``problems``, else
    ``about:blank`` (then ``title`` should be the status's reason phrase); ``errors`` is always
    present, one ``{instanceLocation, keyword, message}`` per problem.
    """
    doc: dict[str, Any] = {
        "type": type_uri or (VALIDATION_PROBLEM_TYPE if problems else "about:blank"),
        "title": title,
        "status": status,
    }
    if detail is not None:
        doc["detail"] = detail
    doc["errors"] = [
        {"instanceLocation": p.instance_location, "keyword": p.keyword, "message": p.message}
        for p in problems
    ]
    doc["request_id"] = request_id
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def is_json_content_type(value: Optional[bytes]) -> bool:
    """Whether a ``Content-Type`` value is JSON: ``application/json`` or any ``type/x+json``,
    with or without parameters, in any case."""
    if not value:
        return False
    media = value.split(b";", 1)[0].strip().lower()
    kind, slash, subtype = media.partition(b"/")
    if not slash or not kind or not subtype or b" " in media or b"\t" in media:
        return False
    return (kind == b"application" and subtype == b"json") or (
        subtype.endswith(b"+json") and len(subtype) > 5
    )


class ResponseMonitor:
    """A response body checked against the route's ``response_schema`` at its end (monitor
    only: it never changes or delays the body). Bodies larger than ``max_bytes`` are not
    checked."""

    def __init__(self, schema: CompiledSchema, max_bytes: int) -> None:
        self.schema = schema
        self.max_bytes = max_bytes
        self._chunks: Optional[list[bytes]] = []
        self._size = 0

    def data(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is None:
            return
        self._size += len(data)
        if self._size > self.max_bytes:
            self._chunks = None
            return
        chunks.append(data)

    def end(self) -> Optional[list[Problem]]:
        """The problems of the whole body (an empty list: it matches); None when it was not
        checked (too large) or is not JSON."""
        chunks, self._chunks = self._chunks, None
        if chunks is None:
            return None
        document, error = parse_json(b"".join(chunks))
        if error is not None:
            return None
        return self.schema.validate(document)
