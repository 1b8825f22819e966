"""The route filter for ``auth = [...]``: any one configured method must pass."""

from __future__ import annotations

from typing import Any, Sequence, Union

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import Answer, error_answer
from ._identity import AuthError, Identity
from .api_key import ApiKeyAuthenticator
from .jwt import JwtAuthenticator

#: JWT and API keys are read from the request's fields; the others (``mtls.MtlsAuthenticator``,
#: ``oauth2.OAuth2Authenticator``) have ``check(request, ctx, scopes)``, which returns an
#: Identity or a Deferred of one (failing with AuthError), or raises AuthError.
Authenticator = Union[JwtAuthenticator, ApiKeyAuthenticator, Any]


class AuthFilter:
    """Tries the route's methods in order; the first that passes sets ``ctx.identity``.

    When all fail, the answer is the most telling refusal: a 503 (the identity provider could
    not be asked: fail closed) before a 403 (valid credential, missing scope or certificate not
    allowed) before a 401 for a bad credential, before a 401 for a missing one. Every 401
    carries one ``WWW-Authenticate`` challenge per method the route accepts. The request never
    reaches the upstream.

    A token bound to a client certificate (RFC 8705 ``cnf.x5t#S256``, from a JWT or an
    introspection answer) passes only on a TLS connection presenting that certificate.
    """

    log = Logger()

    def __init__(
        self, authenticators: Sequence[Authenticator], scopes: Sequence[str], route: str
    ) -> None:
        self.authenticators = tuple(authenticators)
        self.scopes = tuple(scopes)
        self.route = route
        #: Called with (route, reason) for every refusal (metrics hook).
        self.on_refused: Any = None

    def __call__(self, request: Any, ctx: Any) -> Answer | Deferred[Answer | None] | None:
        return self._try(request, ctx, 0, [])

    def _try(
        self, request: Any, ctx: Any, start: int, errors: list[AuthError]
    ) -> Answer | Deferred[Answer | None] | None:
        authenticators = self.authenticators
        for index in range(start, len(authenticators)):
            try:
                result = self._authenticate(authenticators[index], request, ctx)
                if isinstance(result, Deferred):
                    return result.addCallbacks(
                        self._passed_later,
                        self._failed_later,
                        (request, ctx, index, errors),
                        None,
                        (request, ctx, index, errors),
                    )
                _bound_certificate(result, ctx)
            except AuthError as e:
                errors.append(e)
                continue
            ctx.identity = result
            return None
        return self._refuse(errors, ctx)

    def _passed_later(
        self, identity: Identity, request: Any, ctx: Any, index: int, errors: list[AuthError]
    ) -> Answer | Deferred[Answer | None] | None:
        try:
            _bound_certificate(identity, ctx)
        except AuthError as e:
            errors.append(e)
            return self._try(request, ctx, index + 1, errors)
        ctx.identity = identity
        return None

    def _failed_later(
        self, failure: Failure, request: Any, ctx: Any, index: int, errors: list[AuthError]
    ) -> Answer | Deferred[Answer | None] | None:
        failure.trap(AuthError)
        errors.append(failure.value)
        return self._try(request, ctx, index + 1, errors)

    def _refuse(self, errors: list[AuthError], ctx: Any) -> Answer:
        worst = max(errors, key=_rank)
        self.log.info(
            "auth refused on route {route} for {client}: {reason}",
            route=self.route,
            client=ctx.client_ip,
            reason=worst.reason,
            request_id=getattr(ctx, "request_id", b"").decode("latin-1"),
        )
        if self.on_refused is not None:
            self.on_refused(self.route, worst.reason)
        headers = []
        if worst.status == 401:
            headers = [
                (b"WWW-Authenticate", e.www_authenticate.encode("latin-1"))
                for e in errors
                if e.www_authenticate
            ]
        elif worst.www_authenticate:
            headers = [(b"WWW-Authenticate", worst.www_authenticate.encode("latin-1"))]
        if worst.retry_after_s is not None:
            headers.append((b"Retry-After", str(worst.retry_after_s).encode("ascii")))
        return error_answer(worst.status, worst.description, headers, ctx.request_id)

    def _authenticate(
        self, authenticator: Authenticator, request: Any, ctx: Any
    ) -> Identity | Deferred[Identity]:
        if isinstance(authenticator, JwtAuthenticator):
            values = request.fields.get_all(b"authorization")
            identity = authenticator.authenticate(values[-1] if values else None)
            if self.scopes:
                authenticator.check_scopes(identity, self.scopes)
            return identity
        if isinstance(authenticator, ApiKeyAuthenticator):
            return authenticator.authenticate(request.fields, request.query)
        return authenticator.check(request, ctx, self.scopes)  # type: ignore[no-any-return]


def _bound_certificate(identity: Identity, ctx: Any) -> None:
    """RFC 8705: a token with ``cnf.x5t#S256`` is only good with that client certificate."""
    cnf = identity.claims.get("cnf")
    if not isinstance(cnf, dict) or "x5t#S256" not in cnf:
        return
    tls = ctx.tls
    cert = tls.client_cert if tls is not None else None
    if cert is None or cert.x5t_s256 != cnf["x5t#S256"]:
        raise AuthError(
            403,
            "certificate_binding",
            "the token is bound to a client certificate this connection did not present",
        )


def _rank(error: AuthError) -> tuple[int, int, int]:
    return (error.status == 503, error.status == 403, error.reason != "missing")
