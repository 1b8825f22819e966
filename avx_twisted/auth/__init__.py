"""Who is calling: the authenticators (bearer JWT, API key) and what they hand back.

Both authenticators are built once from the configuration and called synchronously per request.
They return an :class:`Identity` or raise :class:`AuthError`, which carries everything the
gateway needs to answer (status, ``WWW-Authenticate``) and to count the refusal (``reason``).
The authenticators live in their own modules and are imported from there
(``from avx_twisted.auth.jwt import JwtAuthenticator``,
``from avx_twisted.auth.api_key import ApiKeyAuthenticator``), so importing this package stays
cheap.
"""

from __future__ import annotations

from ._identity import NO_CLAIMS, AuthError, Identity

__all__ = ["Identity", "AuthError", "NO_CLAIMS"]
