"""URLs the gateway connects to, each checked in one place shared by the config parser and the
code that connects: upstream URLs (:func:`parse_url`, for :class:`avx_twisted.upstream.Target`) and
Redis URLs (:func:`parse_redis_url`, for the Redis rate-limit store and any later Redis user)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

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


#: The query parameters a Redis URL may carry (redis-py's names).
REDIS_QUERY_PARAMETERS = ("db", "ssl_ca_certs", "ssl_cert_reqs")

_USERINFO_HINT = "percent-encode '/', '?', '#' and '@' in the user name and password"
_HOST_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class RedisURL:
    """Where a Redis server is and how to log in to it: the parsed form of a ``redis://``,
    ``rediss://`` or ``unix://`` URL, shared by every Redis user (rate limits, caches).

    ``path`` is set for a unix socket (then ``host`` is None and ``port`` 0), ``host`` and
    ``port`` otherwise. ``verify`` (certificate and host name checks) only means something with
    ``tls``; ``ca_file`` replaces the system trust store. The password stays out of ``repr``;
    log :meth:`redacted` instead of the URL.
    """

    tls: bool = False
    host: str | None = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    verify: bool = True

    def redacted(self) -> str:
        """This URL as it can be logged: the password, if any, written as ``***``."""
        auth = quote(self.username or "", safe="")
        if self.password is not None:
            auth += ":***"
        if auth:
            auth += "@"
        query: list[tuple[str, str]] = []
        if self.path is not None:
            text = f"unix://{auth}{quote(self.path)}"
            if self.db:
                query.append(("db", str(self.db)))
        else:
            host = f"[{self.host}]" if ":" in (self.host or "") else self.host
            text = f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{self.port}/{self.db}"
        if self.ca_file is not None:
            query.append(("ssl_ca_certs", self.ca_file))
        if self.tls and not self.verify:
            query.append(("ssl_cert_reqs", "none"))
        return text + ("?" + urlencode(query, safe="/") if query else "")


def parse_redis_url(url: str) -> RedisURL:
    """Validate a Redis URL (redis-py's forms) and return its parts.

    ``redis://[[username]:password@]host[:port][/db]``, ``rediss://`` the same over TLS, and
    ``unix://[[username]:password@]/path/to/redis.sock[?db=N]``; query parameters ``db``,
    ``ssl_ca_certs`` and ``ssl_cert_reqs=none``. Raises ValueError with a short reason, worded to
    follow the quoted URL (``'x' has no host``), that never repeats the password.
    """
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("contains whitespace or control characters")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError("is not a redis://, rediss:// or unix:// URL")
    if "#" in url:
        raise ValueError(f"has a '#' (a fragment is not allowed; {_USERINFO_HINT})")
    # Split by hand, not with urlsplit: its checks of brackets see the password too, and differ
    # between Python versions.
    rest, _, query_text = url[len(scheme) + 3 :].partition("?")
    slash = rest.find("/")
    netloc, url_path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if "@" in url_path or "@" in query_text:
        raise ValueError(f"has an '@' after the host ({_USERINFO_HINT})")
    userinfo, at, hostport = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    query = _query(query_text)
    db = query.pop("db", None)
    ca_file = query.pop("ssl_ca_certs", None)
    cert_reqs = query.pop("ssl_cert_reqs", None)
    if scheme != "rediss" and (ca_file is not None or cert_reqs is not None):
        raise ValueError("has ssl_ca_certs or ssl_cert_reqs, which only apply to rediss://")
    if cert_reqs not in (None, "required", "none"):
        raise ValueError(f"has ssl_cert_reqs={cert_reqs!r} (expected 'required', or 'none')")
    verify = cert_reqs != "none"
    if ca_file is not None and not verify:
        raise ValueError("has both ssl_ca_certs and ssl_cert_reqs=none (pick one)")
    if scheme == "unix":
        if hostport:
            raise ValueError(
                f"has host {hostport!r} (expected unix://[[username]:password@]/path/to/redis.sock)"
            )
        path = unquote(url_path)
        if path in ("", "/"):
            raise ValueError("has no socket path (expected unix:///path/to/redis.sock)")
        return RedisURL(
            host=None, port=0, path=path, db=_db(db), username=username, password=password
        )
    host, port = _host_port(hostport)
    if url_path not in ("", "/"):
        if db is not None:
            raise ValueError("gives the db twice (in the path and as ?db=)")
        db = url_path[1:]
    return RedisURL(
        tls=scheme == "rediss",
        host=host,
        port=port,
        db=_db(db),
        username=username,
        password=password,
        ca_file=ca_file,
        verify=verify,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, secret = userinfo.partition(":")
    try:
        username = unquote(user, errors="strict") or None
        password = unquote(secret, errors="strict") or None
    except UnicodeDecodeError:
        raise ValueError("has a user name or password that is not percent-encoded UTF-8")
    if username is not None and password is None:
        raise ValueError("has a user name but no password (write :password@ for a password alone)")
    return username, password


def _query(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    unknown = []
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name not in REDIS_QUERY_PARAMETERS:
            unknown.append(name)
        elif name in found:
            raise ValueError(f"repeats ?{name}=")
        elif not value:
            raise ValueError(f"has an empty ?{name}=")
        else:
            found[name] = value
    if unknown:
        raise ValueError(
            f"has unknown query parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(n) for n in unknown)} "
            f"(known: {', '.join(REDIS_QUERY_PARAMETERS)})"
        )
    return found


def _host_port(hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            bracket = ""
        if not bracket:
            raise ValueError(f"has an invalid IPv6 host {hostport!r}")
    else:
        host, colon, port_text = hostport.partition(":")
        rest = colon + port_text
        if not host:
            raise ValueError("has no host")
        if not host.isascii():
            raise ValueError(f"has host {host!r}, which is not ASCII (use its punycode form)")
        if not _HOST_CHARS.fullmatch(host):
            raise ValueError(f"has an invalid host {host!r}")
    if not rest:
        return host.lower(), 6379
    port = int(rest[1:]) if rest[:1] == ":" and _DIGITS.fullmatch(rest[1:]) else 0
    if not 0 < port < 65536:
        raise ValueError(f"has an invalid port in {hostport!r} (expected 1-65535)")
    return host.lower(), port


def _db(text: str | None) -> int:
    if text is None:
        return 0
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"has db {text!r}, which is not a non-negative integer")
    return int(text)
