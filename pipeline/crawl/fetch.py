"""One HTTP request for the crawler: a connection pinned to the address the SSRF guard checked
(the name's next address when connecting fails), redirects followed by hand, a total deadline
a trickling server cannot extend, a byte cap enforced while streaming (also through gzip), and
X-Robots-Tag opt-outs. Errors of the network become a reason; errors of our code propagate.
No retries and no politeness here: pipeline/crawl/download.py adds those.

    got = fetch_once("https://example.com/a.jpg", DownloadConfig(), Crawler(DownloadConfig()))
    got.ok, got.reason, got.data
"""

from __future__ import annotations

import email.utils
import http.client
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from pipeline.crawl.deadline import ATTEMPT_DEADLINE
from pipeline.crawl.netsafety import BlockedAddress, DnsError, check_address, is_ip_literal
from schemas import Reason

if TYPE_CHECKING:
    from pipeline.crawl.download import Crawler, DownloadConfig


_REDIRECTS = (301, 302, 303, 307, 308)


_CHUNK = 64 * 1024


# What a server, a network or a resolver can make a request fail with: classified into a reason.
# (Bad data from a server -- a Location, a header, a body -- becomes a _Failure where it is read.)
# Anything else is a bug in our code and propagates, failing the job with its traceback.
_NETWORK_ERRORS = (OSError, HTTPError, http.client.HTTPException, BlockedAddress)


@dataclass
class Fetched:
    ok: bool
    reason: str | None = None
    error: str | None = None
    http_status: int | None = None
    data: bytes | None = None
    final_url: str | None = None
    retry_after: float | None = None


class _Failure(Exception):
    def __init__(
        self,
        reason: str,
        detail: str,
        http_status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(detail)
        self.reason, self.http_status, self.retry_after = reason, http_status, retry_after


def opted_out(header_values: list[str], disallowed: tuple[str, ...], ua_token: str) -> str | None:
    """The directive that forbids use, from X-Robots-Tag header values, or None.

    `X-Robots-Tag: noai` applies to every crawler; `X-Robots-Tag: otherbot: noai` only to
    otherbot. Several directives may share a line, comma-separated.
    """
    if not disallowed:
        return None
    wanted = {d.lower() for d in disallowed}
    ua = ua_token.lower()
    for value in header_values:
        directives = [d.strip().lower() for d in value.split(",")]
        scope = None
        head = directives[0]
        if ":" in head:
            name, _, rest = head.partition(":")
            if name.strip() not in ("unavailable_after",):
                scope, directives[0] = name.strip(), rest.strip()
        if scope is not None and scope != ua:
            continue
        for d in directives:
            if d in wanted:
                return d
    return None


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not '²', which is a digit that float() refuses
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BlockedAddress):
        return Reason.BLOCKED_ADDRESS, str(exc)
    if isinstance(exc, (NameResolutionError, socket.gaierror, DnsError)):
        return Reason.DNS, detail
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
    if isinstance(exc, (NewConnectionError, ConnectionRefusedError)):
        return Reason.CONNECT, detail
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, socket.timeout, TimeoutError)):
        return Reason.TIMEOUT, detail
    if isinstance(exc, (SSLError, ssl.SSLError)):
        return Reason.TLS, detail
    if isinstance(exc, LocationParseError):
        return Reason.UNPARSABLE_URL, detail
    return Reason.NETWORK, detail  # ProtocolError (reset, incomplete read) and the rest


def _set_read_timeout(resp, seconds: float) -> None:
    # The total deadline: no single read may wait past it, however slowly bytes trickle.
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(max(0.001, seconds))


def _read_body(resp, cfg: DownloadConfig, deadline_at: float, max_bytes: int) -> bytes:
    encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise _Failure(Reason.NETWORK, f"unsupported Content-Encoding {encoding!r}")
    inflater = None
    if encoding != "identity":
        inflater = zlib.decompressobj(47 if "gzip" in encoding else zlib.MAX_WBITS)
    parts, size = [], 0
    while True:
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise _Failure(
                Reason.DEADLINE, f"deadline of {cfg.deadline}s passed while reading the body"
            )
        _set_read_timeout(resp, min(cfg.read_timeout, remaining))
        chunk = resp.read1(_CHUNK, decode_content=False)
        if not chunk:
            break
        for piece in _inflate(inflater, chunk, encoding) if inflater else (chunk,):
            size += len(piece)
            if size > max_bytes:  # at most max_bytes and one piece were ever held
                verb = "inflates" if inflater else "exceeds"
                raise _Failure(Reason.TOO_LARGE, f"body {verb} past {max_bytes} bytes")
            parts.append(piece)
    return b"".join(parts)


def _inflate(inflater, data: bytes, encoding: str):
    """The inflated bytes of `data`, _CHUNK at a time: 64 KiB of gzip may hold 64 MiB."""
    while True:
        try:
            piece = inflater.decompress(data, _CHUNK)
        except zlib.error as e:
            raise _Failure(Reason.NETWORK, f"corrupt {encoding} body: {e}") from None
        yield piece
        data = inflater.unconsumed_tail
        if not data and len(piece) < _CHUNK:  # a full piece may leave output pending in zlib
            return


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # ASCII: an IDN in its IDNA form, an IPv6 literal without brackets
    port: int
    path: str  # path and query, what the request line asks for
    host_header: str


def _target(url: str) -> _Target:
    """Where a URL points; a _Failure (unparsable_url) for one no request can be made to."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
        if not host:
            raise ValueError("no host")
        if not is_ip_literal(host):
            host = host.encode("idna").decode("ascii")  # UnicodeError: an empty or long label
    except ValueError as e:
        raise _Failure(Reason.UNPARSABLE_URL, f"{e}: {url[:200]}") from None
    default_port = 443 if parts.scheme == "https" else 80
    host_header = f"[{host}]" if ":" in host else host
    if port and port != default_port:
        host_header += f":{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, host, port or default_port, path, host_header)


def _open(url: str, crawler: Crawler, headers: dict, timeout: urllib3.Timeout):
    """One request to an address we checked (pinned: the name is never resolved again), with
    Host and SNI of the URL's host. The name's addresses are tried in order while connecting
    fails: nothing was sent to one that refused or timed out."""
    cfg = crawler.cfg
    target = _target(url)
    ips = crawler.resolver.resolve(target.host)
    for ip in ips:  # every address a name has, so a mixed answer cannot smuggle one in
        check_address(ip, cfg.allow_private_networks, cfg.allow_networks)
    for ip in ips[:-1]:
        try:
            return _request(ip, target, crawler, headers, timeout)
        except ConnectTimeoutError:  # NewConnectionError too: refused, unreachable, timed out
            if ATTEMPT_DEADLINE.at is not None and time.monotonic() >= ATTEMPT_DEADLINE.at:
                raise
    return _request(ips[-1], target, crawler, headers, timeout)


def _request(ip: str, target: _Target, crawler: Crawler, headers: dict, timeout: urllib3.Timeout):
    cfg = crawler.cfg
    tls = {"assert_hostname": target.host, "server_hostname": target.host}
    pool = crawler.http.connection_from_host(
        ip, target.port, target.scheme, pool_kwargs=tls if target.scheme == "https" else {}
    )
    resp = pool.urlopen(
        "GET",
        target.path,
        headers={**headers, "Host": target.host_header},
        redirect=False,
        retries=False,
        preload_content=False,
        timeout=timeout,
        assert_same_host=False,
    )
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is not None:  # the address actually connected to
        try:
            check_address(sock.getpeername()[0], cfg.allow_private_networks, cfg.allow_networks)
        except BlockedAddress:
            resp.close()
            raise
    return resp


def fetch_once(
    url: str, cfg: DownloadConfig, crawler: Crawler, max_bytes: int | None = None
) -> Fetched:
    deadline_at = time.monotonic() + cfg.deadline
    headers = {
        "User-Agent": cfg.user_agent,
        "Accept": "image/*,*/*;q=0.5",
        "Accept-Encoding": "identity",
    }
    current = url
    resp = None
    ATTEMPT_DEADLINE.at = deadline_at
    try:
        for _hop in range(cfg.max_redirects + 1):
            remaining = deadline_at - time.monotonic()
            if remaining <= 0:
                raise _Failure(
                    Reason.DEADLINE, f"deadline of {cfg.deadline}s passed during redirects"
                )
            timeout = urllib3.Timeout(
                connect=min(cfg.connect_timeout, remaining), read=min(cfg.read_timeout, remaining)
            )
            resp = _open(current, crawler, headers, timeout)
            if resp.status not in _REDIRECTS:
                break
            location = resp.headers.get("Location")
            resp.drain_conn()
            resp.release_conn()
            resp = None
            if not location:
                raise _Failure(Reason.http(0), "redirect without a Location header")
            try:
                current = urljoin(current, location)
                scheme = urlsplit(current).scheme
            except ValueError as e:
                raise _Failure(
                    Reason.UNPARSABLE_URL, f"redirect to {location[:200]!r}: {e}"
                ) from None
            if scheme not in ("http", "https"):
                raise _Failure(Reason.BAD_SCHEME, f"redirect to a non-http(s) URL: {current[:200]}")
        else:
            raise _Failure(Reason.TOO_MANY_REDIRECTS, f"more than {cfg.max_redirects} redirects")
        status = resp.status
        if not 200 <= status < 300:
            retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
            raise _Failure(
                Reason.http(status),
                f"HTTP {status} {resp.reason or ''}".strip(),
                status,
                retry_after,
            )
        directive = opted_out(
            resp.headers.getlist("X-Robots-Tag"), cfg.disallowed_directives, cfg.user_agent_token
        )
        if directive:
            raise _Failure(Reason.OPTED_OUT, f"X-Robots-Tag: {directive}", status)
        limit = max_bytes or cfg.max_bytes
        length = (resp.headers.get("Content-Length") or "").strip()
        if length.isascii() and length.isdigit() and int(length) > limit:
            raise _Failure(
                Reason.TOO_LARGE, f"Content-Length {length} exceeds {limit} bytes", status
            )
        try:
            data = _read_body(resp, cfg, deadline_at, limit)
        except _Failure as f:
            f.http_status = status
            raise
        return Fetched(True, http_status=status, data=data, final_url=current)
    except _Failure as f:
        return Fetched(
            False, f.reason, str(f), f.http_status, final_url=current, retry_after=f.retry_after
        )
    except _NETWORK_ERRORS as e:  # classified; anything else is a bug and propagates
        reason, detail = _classify(e)
        if time.monotonic() >= deadline_at and reason in (Reason.TIMEOUT, Reason.NETWORK):
            reason = Reason.DEADLINE  # the timer cut the connection, or the last read ran out
            detail = f"deadline of {cfg.deadline}s passed ({detail})"
        return Fetched(False, reason, detail, final_url=current)
    finally:
        ATTEMPT_DEADLINE.at = None
        if resp is not None:
            resp.release_conn() if resp.isclosed() else resp.close()


def is_retryable(f: Fetched) -> bool:
    return Reason.is_transient(f.reason)
