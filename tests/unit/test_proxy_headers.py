"""The header fields the forwarder sends and relays (avx_twisted/proxy_headers.py)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.proxy_headers import vary_value


class VaryValueTests(SynchronousTestCase):
    """vary_value."""

    def test_no_existing_header(self) -> None:
        self.assertEqual(vary_value(None, b"Origin"), [b"Origin"])
        self.assertEqual(vary_value([], b"Origin"), [b"Origin"])

    def test_appends_to_existing(self) -> None:
        self.assertEqual(vary_value([b"Accept-Encoding"], b"Origin"), [b"Accept-Encoding, Origin"])

    def test_no_duplicate_case_insensitively(self) -> None:
        self.assertEqual(
            vary_value([b"accept-encoding, origin"], b"Origin"), [b"accept-encoding, origin"]
        )

    def test_merges_several_lines_and_names(self) -> None:
        self.assertEqual(
            vary_value(
                [b"Accept", b"Accept-Encoding,Origin"], b"Origin, Access-Control-Request-Method"
            ),
            [b"Accept, Accept-Encoding, Origin, Access-Control-Request-Method"],
        )

    def test_star_absorbs_everything(self) -> None:
        self.assertEqual(vary_value([b"*"], b"Origin"), [b"*"])
