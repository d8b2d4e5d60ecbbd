"""URL validation and normalization: pure functions, no Beam.

normalize_url("HTTP://Example.COM:80/a b.jpg#x")  # -> 'http://example.com/a%20b.jpg'
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from schemas import Reason

DEFAULT_PORTS = {"http": 80, "https": 443}


# Characters left alone when re-quoting: reserved + already-encoded '%'.
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"


_SAFE_QUERY = _SAFE_PATH + "?"


class InvalidUrl(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def normalize_url(url: str, max_length: int = 2048) -> str:
    """Canonical form used for dedupe and keys; raises InvalidUrl with a Reason."""
    if url is None or not isinstance(url, str) or not url.strip():
        raise InvalidUrl(Reason.MISSING_URL, "no URL")
    url = url.strip()
    if len(url) > max_length:
        raise InvalidUrl(Reason.URL_TOO_LONG, f"URL is {len(url)} characters (max {max_length})")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidUrl(Reason.UNPARSABLE_URL, str(e)) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidUrl(Reason.BAD_SCHEME, f"scheme {parts.scheme!r} is not http(s)")
    host = parts.hostname
    if not host:
        raise InvalidUrl(Reason.UNPARSABLE_URL, "URL has no host")
    if any(c.isspace() for c in host):
        raise InvalidUrl(Reason.UNPARSABLE_URL, f"host {host!r} contains whitespace")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host.lower()
    except UnicodeError as e:
        raise InvalidUrl(Reason.UNPARSABLE_URL, f"host is not a valid IDN: {e}") from None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{userinfo}@{netloc}"
    path = quote(parts.path or "/", safe=_SAFE_PATH)
    query = quote(parts.query, safe=_SAFE_QUERY)
    return urlunsplit((scheme, netloc, path, query, ""))


def domain_of(url: str) -> str:
    """Host of a URL, or '' if it has none (used for per-domain statistics)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
