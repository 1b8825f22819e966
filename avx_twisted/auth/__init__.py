"""Who is calling: the authenticators and what they hand back.

Each authenticator is built once from the configuration: bearer JWTs (``jwt.JwtAuthenticator``,
keys from a file, a JWKS URL or OIDC discovery: ``_jwks.JwksSource``), API keys
(``api_key.ApiKeyAuthenticator``), opaque bearer tokens by RFC 7662 introspection
(``oauth2.OAuth2Authenticator``) and verified client certificates (``mtls.MtlsAuthenticator``).
JWT, API key and mTLS checks are synchronous; introspection returns a Deferred (answered from its
cache without a call when it can). Each gives an :class:`Identity` or an :class:`AuthError`, which
carries everything the gateway needs to answer (status, ``WWW-Authenticate``, ``Retry-After``) and
to count the refusal (``reason``). ``filter.AuthFilter`` runs a route's methods ("any one of").
The authenticators live in their own modules and are imported from there, so importing this
package stays cheap.
"""

from __future__ import annotations

from ._identity import NO_CLAIMS, AuthError, Identity

__all__ = ["Identity", "AuthError", "NO_CLAIMS"]
