"""Client address resolution behind trusted proxies."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.context import ClientAddresses


class ClientAddressTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addresses = ClientAddresses(["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"])

    def test_no_trusted_proxies_means_the_peer(self):
        addresses = ClientAddresses([])
        self.assertEqual(addresses.client_ip("127.0.0.1", [b"1.2.3.4"]), "127.0.0.1")

    def test_untrusted_peer_cannot_choose_its_address(self):
        self.assertEqual(self.addresses.client_ip("198.51.100.7", [b"1.2.3.4"]), "198.51.100.7")

    def test_trusted_peer_gives_the_right_most_untrusted_entry(self):
        chain = [b"6.6.6.6, 203.0.113.9", b"10.1.2.3"]  # client forged 6.6.6.6
        self.assertEqual(self.addresses.client_ip("127.0.0.1", chain), "203.0.113.9")

    def test_trusted_peer_without_forwarded_for_is_the_client(self):
        self.assertEqual(self.addresses.client_ip("10.9.9.9", None), "10.9.9.9")

    def test_all_entries_trusted_gives_the_left_most(self):
        self.assertEqual(self.addresses.client_ip("10.0.0.1", [b"10.0.0.2, 10.0.0.3"]), "10.0.0.2")

    def test_ipv6_and_ipv4_mapped_peers(self):
        self.assertTrue(self.addresses.is_trusted("2001:db8::1"))
        self.assertTrue(self.addresses.is_trusted("::ffff:10.1.1.1"))
        self.assertFalse(self.addresses.is_trusted("2001:db9::1"))

    def test_garbage_is_never_trusted(self):
        self.assertFalse(self.addresses.is_trusted("not-an-ip"))
        self.assertEqual(self.addresses.client_ip("127.0.0.1", [b"1.1.1.1, garbage"]), "garbage")
