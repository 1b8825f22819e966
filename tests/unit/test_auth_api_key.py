"""Tests for avx_twisted.auth.api_key: where keys are read, how they match, query stripping."""

from __future__ import annotations

import hashlib
import hmac

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.auth import AuthError, Identity
from avx_twisted.auth.api_key import ApiKeyAuthenticator
from avx_twisted.config import ApiKey, ApiKeyConfig
from avx_twisted.h1 import Fields


def fields(mapping: dict[bytes, list[bytes]] | None = None) -> Fields:
    """Request header fields from a name -> values mapping."""
    return Fields([(name, value) for name, values in (mapping or {}).items() for value in values])


def sha256(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


KEYS = (
    ApiKey(name="ci", sha256=sha256(b"ci-key")),
    ApiKey(name="ops", sha256=sha256(b"ops-key")),
    ApiKey(name="batch", sha256=sha256(b"batch-key")),
)


def authenticator(**kwargs: object) -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator(ApiKeyConfig(keys=KEYS, **kwargs))  # type: ignore[arg-type]


class HeaderTests(SynchronousTestCase):
    """Keys presented in the configured header."""

    def test_known_key_gives_its_configured_name(self) -> None:
        identity = authenticator().authenticate(fields({b"X-API-Key": [b"ops-key"]}), b"")
        self.assertEqual(identity, Identity("api_key", "ops", {}, frozenset()))
        self.assertEqual(dict(identity.claims), {})
        self.assertEqual(identity.scopes, frozenset())

    def test_header_name_is_case_insensitive(self) -> None:
        identity = authenticator().authenticate(fields({b"x-api-key": [b"ci-key"]}), b"")
        self.assertEqual(identity.name, "ci")

    def test_surrounding_whitespace_is_ignored(self) -> None:
        identity = authenticator().authenticate(fields({b"X-API-Key": [b" ci-key "]}), b"")
        self.assertEqual(identity.name, "ci")

    def test_configured_header(self) -> None:
        auth = authenticator(header="X-Gateway-Key")
        self.assertEqual(auth.credential_header, b"x-gateway-key")
        identity = auth.authenticate(fields({b"X-Gateway-Key": [b"batch-key"]}), b"")
        self.assertEqual(identity.name, "batch")
        e = self.assertRaises(
            AuthError, auth.authenticate, fields({b"X-API-Key": [b"batch-key"]}), b""
        )
        self.assertEqual(e.reason, "missing")
        self.assertEqual(e.www_authenticate, 'ApiKey header="X-Gateway-Key"')

    def test_credential_header_is_lowercased(self) -> None:
        self.assertEqual(authenticator().credential_header, b"x-api-key")

    def test_unknown_key_is_refused(self) -> None:
        e = self.assertRaises(
            AuthError, authenticator().authenticate, fields({b"X-API-Key": [b"nope"]}), b""
        )
        self.assertEqual((e.status, e.reason), (401, "unknown_key"))
        self.assertEqual(e.www_authenticate, 'ApiKey header="X-API-Key"')
        self.assertNotIn("nope", e.description)

    def test_missing_key_is_refused(self) -> None:
        e = self.assertRaises(AuthError, authenticator().authenticate, fields(), b"")
        self.assertEqual((e.status, e.reason), (401, "missing"))
        self.assertEqual(e.www_authenticate, 'ApiKey header="X-API-Key"')

    def test_empty_header_counts_as_missing(self) -> None:
        e = self.assertRaises(
            AuthError, authenticator().authenticate, fields({b"X-API-Key": [b"  "]}), b""
        )
        self.assertEqual(e.reason, "missing")

    def test_two_different_keys_are_refused(self) -> None:
        headers = fields({b"X-API-Key": [b"ci-key", b"ops-key"]})
        e = self.assertRaises(AuthError, authenticator().authenticate, headers, b"")
        self.assertEqual((e.status, e.reason), (401, "malformed"))

    def test_repeated_same_key_is_accepted(self) -> None:
        headers = fields({b"X-API-Key": [b"ci-key", b"ci-key"]})
        self.assertEqual(authenticator().authenticate(headers, b"").name, "ci")

    def test_no_configured_keys_refuses_everything(self) -> None:
        auth = ApiKeyAuthenticator(ApiKeyConfig())
        e = self.assertRaises(AuthError, auth.authenticate, fields({b"X-API-Key": [b"x"]}), b"")
        self.assertEqual(e.reason, "unknown_key")


class ConstantTimeTests(SynchronousTestCase):
    """The presented key's digest is compared with every configured digest."""

    def count_compares(self) -> list[tuple[bytes, bytes]]:
        calls: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def counting(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return real(a, b)

        self.patch(hmac, "compare_digest", counting)
        return calls

    def test_first_key_matching_still_compares_all(self) -> None:
        calls = self.count_compares()
        self.assertEqual(
            authenticator().authenticate(fields({b"X-API-Key": [b"ci-key"]}), b"").name, "ci"
        )
        self.assertEqual(len(calls), len(KEYS))
        self.assertEqual({b for _, b in calls}, {bytes.fromhex(k.sha256) for k in KEYS})

    def test_unknown_key_compares_all(self) -> None:
        calls = self.count_compares()
        self.assertRaises(
            AuthError, authenticator().authenticate, fields({b"X-API-Key": [b"zzz"]}), b""
        )
        self.assertEqual(len(calls), len(KEYS))

    def test_compares_digests_not_keys(self) -> None:
        calls = self.count_compares()
        authenticator().authenticate(fields({b"X-API-Key": [b"ops-key"]}), b"")
        self.assertTrue(all(a == hashlib.sha256(b"ops-key").digest() for a, _ in calls))


class QueryParameterTests(SynchronousTestCase):
    """Keys in the query string, only when ``query_param`` is configured."""

    def test_query_is_ignored_when_not_configured(self) -> None:
        auth = authenticator()
        e = self.assertRaises(AuthError, auth.authenticate, fields(), b"api_key=ci-key")
        self.assertEqual(e.reason, "missing")

    def test_query_parameter_when_configured(self) -> None:
        auth = authenticator(query_param="api_key")
        self.assertEqual(auth.authenticate(fields(), b"a=1&api_key=ci-key&b=2").name, "ci")

    def test_query_value_is_percent_decoded(self) -> None:
        auth = ApiKeyAuthenticator(
            ApiKeyConfig(query_param="key", keys=(ApiKey("odd", sha256(b"a/b c+d")),))
        )
        self.assertEqual(auth.authenticate(fields(), b"key=a%2Fb+c%2Bd").name, "odd")

    def test_query_parameter_name_is_matched_exactly(self) -> None:
        auth = authenticator(query_param="api_key")
        e = self.assertRaises(AuthError, auth.authenticate, fields(), b"api_keys=ci-key")
        self.assertEqual(e.reason, "missing")

    def test_header_wins_over_query(self) -> None:
        auth = authenticator(query_param="api_key")
        headers = fields({b"X-API-Key": [b"ops-key"]})
        self.assertEqual(auth.authenticate(headers, b"api_key=ci-key").name, "ops")

    def test_two_different_query_keys_are_refused(self) -> None:
        auth = authenticator(query_param="api_key")
        e = self.assertRaises(
            AuthError, auth.authenticate, fields(), b"api_key=ci-key&api_key=ops-key"
        )
        self.assertEqual(e.reason, "malformed")

    def test_empty_query_value_is_missing(self) -> None:
        auth = authenticator(query_param="api_key")
        e = self.assertRaises(AuthError, auth.authenticate, fields(), b"api_key=&x=1")
        self.assertEqual(e.reason, "missing")

    def test_unknown_query_key(self) -> None:
        auth = authenticator(query_param="api_key")
        e = self.assertRaises(AuthError, auth.authenticate, fields(), b"api_key=other")
        self.assertEqual(e.reason, "unknown_key")


class StripQueryTests(SynchronousTestCase):
    """``strip_query`` removes the key parameter and keeps everything else byte-for-byte."""

    def test_removes_every_occurrence_and_keeps_the_rest(self) -> None:
        auth = authenticator(query_param="api_key")
        query = b"a=1&api_key=ci-key&b=%2F+x&api_key=other&c&d=&e=%E2%82%AC"
        self.assertEqual(auth.strip_query(query), b"a=1&b=%2F+x&c&d=&e=%E2%82%AC")

    def test_encoded_parameter_name_is_removed_too(self) -> None:
        auth = authenticator(query_param="api_key")
        self.assertEqual(auth.strip_query(b"api%5Fkey=ci-key&x=1"), b"x=1")
        self.assertEqual(auth.authenticate(fields(), b"api%5Fkey=ci-key&x=1").name, "ci")

    def test_only_the_parameter_leaves_an_empty_query(self) -> None:
        auth = authenticator(query_param="api_key")
        self.assertEqual(auth.strip_query(b"api_key=ci-key"), b"")
        self.assertEqual(auth.strip_query(b"api_key"), b"")

    def test_similar_names_are_kept(self) -> None:
        auth = authenticator(query_param="api_key")
        query = b"api_keys=1&xapi_key=2&api_key_=3"
        self.assertIs(auth.strip_query(query), query)

    def test_empty_separators_are_kept(self) -> None:
        auth = authenticator(query_param="api_key")
        self.assertEqual(auth.strip_query(b"a=1&&api_key=k&&b=2"), b"a=1&&&b=2")

    def test_nothing_stripped_when_not_configured(self) -> None:
        query = b"api_key=ci-key&a=1"
        self.assertIs(authenticator().strip_query(query), query)

    def test_empty_query(self) -> None:
        self.assertEqual(authenticator(query_param="api_key").strip_query(b""), b"")
