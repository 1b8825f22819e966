"""Upstream URLs: the one check of what the gateway can forward to, shared by the config parser
and :class:`avx_twisted.upstream.Target`."""

from __future__ import annotations

from urllib.parse import urlsplit

#: The schemes an upstream URL may have and the port each implies.
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_url(url: str) -> tuple[str, str, int, str]:
    """Validate an upstream URL and return (scheme, host, port, path)."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"malformed URL: {e}")
    if not parts.scheme:
        raise ValueError("missing scheme (expected http:// or https://)")
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"scheme {parts.scheme!r} is not http or https")
    if "@" in parts.netloc:
        raise ValueError("userinfo (user@host) is not allowed")
    if "#" in url:
        raise ValueError("fragment ('#...') is not allowed")
    if "?" in url:
        raise ValueError("query string ('?...') is not allowed")
    host = parts.hostname
    if not host:
        raise ValueError("missing host")
    if not host.isascii():
        raise ValueError(f"host {host!r} is not ASCII (use its punycode form)")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"invalid port in {parts.netloc!r} (expected 1-65535)")
    if port is None:
        port = DEFAULT_PORTS[parts.scheme]
    return parts.scheme, host, port, parts.path
