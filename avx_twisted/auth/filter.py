"""The route filter for ``auth = [...]``: any one configured method must pass."""

from __future__ import annotations

from typing import Any, Sequence, Union

from twisted.logger import Logger

from ..errors import Answer, error_answer
from ._identity import AuthError, Identity
from .api_key import ApiKeyAuthenticator
from .jwt import JwtAuthenticator

Authenticator = Union[JwtAuthenticator, ApiKeyAuthenticator]


class AuthFilter:
    """Tries the route's methods in order; the first that passes sets ``ctx.identity``.

    When all fail, the answer is the most telling refusal: a 403 (valid token, missing scope)
    before a 401 for a bad credential, before a 401 for a missing one. Every 401 carries one
    ``WWW-Authenticate`` challenge per method the route accepts. The request never reaches the
    upstream.
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

    def __call__(self, request: Any, ctx: Any) -> Answer | None:
        errors: list[AuthError] = []
        for authenticator in self.authenticators:
            try:
                identity = self._authenticate(authenticator, request)
            except AuthError as e:
                errors.append(e)
                continue
            ctx.identity = identity
            return None
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
        return error_answer(worst.status, worst.description, headers, ctx.request_id)

    def _authenticate(self, authenticator: Authenticator, request: Any) -> Identity:
        if isinstance(authenticator, JwtAuthenticator):
            values = request.fields.get_all(b"authorization")
            identity = authenticator.authenticate(values[-1] if values else None)
            if self.scopes:
                authenticator.check_scopes(identity, self.scopes)
            return identity
        return authenticator.authenticate(request.fields, request.query)


def _rank(error: AuthError) -> tuple[int, int]:
    return (error.status == 403, error.reason != "missing")
