"""``auth = ["mtls"]``: the client certificate the TLS listener verified is the credential.

The listener (``client_auth = "optional"`` or ``"require"``) has already checked that the
certificate chains to ``client_ca_file``, is within its validity and was proven by the client's
key; this authenticator decides whether that certificate may use the route: its subject (RFC 4514,
compared as names) or one of its SANs must be in the route's lists (both lists empty: any
verified certificate). The identity's name, the *consumer*, is the first allowed SAN the
certificate carries, else its CN.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Sequence

from .._configmodel import MtlsPolicy
from ..tls import ClientCertificate, normalise_subject
from ._identity import AuthError, Identity

_NO_SCOPES: frozenset[str] = frozenset()


class MtlsAuthenticator:
    """Accepts a request whose connection presented an allowed, verified client certificate."""

    def __init__(self, policy: MtlsPolicy) -> None:
        self.policy = policy
        self._subjects = frozenset(normalise_subject(s) for s in policy.allowed_subjects)
        self._san_set = frozenset(policy.allowed_sans)
        self._any = not self._subjects and not self._san_set

    def check(self, request: Any, ctx: Any, scopes: Sequence[str] = ()) -> Identity:
        """The consumer's identity, or :class:`AuthError`: 401 without a verified certificate,
        403 with one that is not allowed here."""
        tls = ctx.tls
        cert = tls.client_cert if tls is not None else None
        if cert is None:
            raise AuthError(401, "no_certificate", "a client certificate is required")
        name = self.consumer(cert)
        if name is None:
            raise AuthError(
                403, "certificate_not_allowed", "the client certificate is not allowed here"
            )
        return Identity(
            method="mtls",
            name=name,
            claims=MappingProxyType(
                {
                    "subject": cert.subject,
                    "issuer": cert.issuer,
                    "sans": list(cert.sans),
                    "serial": cert.serial,
                    "sha256": cert.sha256,
                }
            ),
            scopes=_NO_SCOPES,
        )

    def consumer(self, cert: ClientCertificate) -> str | None:
        """The name ``cert`` is known by when it is allowed (None when it is not)."""
        allowed_sans, any_cert = self._san_set, self._any
        for san in cert.sans:  # URIs (SPIFFE IDs) first, then DNS names, then emails
            if any_cert or san in allowed_sans:
                return san
        if any_cert or normalise_subject(cert.subject) in self._subjects:
            return cert.common_name or cert.subject
        return None
