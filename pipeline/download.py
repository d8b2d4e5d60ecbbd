"""Downloading images: one classified result row per URL, never an exception.

    row = fetch_row(pair, Crawler(cfg), cfg)
    rows = pairs | "DownloadImages" >> DownloadImages(DownloadConfig(threads=64))

Per request: connect/read timeouts and one total deadline that a trickling server cannot
extend, bounded retries with jittered backoff on transient failures (timeouts, connection
errors, 429, 5xx; Retry-After honoured up to a cap), redirects followed by hand (counted,
scheme-checked), a byte cap enforced while streaming, magic-byte sniffing (an HTML page is
not an image whatever its Content-Type says) and the X-Robots-Tag opt-out directives.
"""

from __future__ import annotations

import email.utils
import hashlib
import random
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from functools import partial
from urllib.parse import urljoin, urlsplit

import apache_beam as beam
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from pipeline.concurrency import ThreadedMapFn
from pipeline.hosts import CircuitOpen, HostBusy, HostPolicy, RobotsCache
from pipeline.images import sniff_mime
from pipeline.netsafety import BlockedAddress, DnsError, Resolver, check_address
from pipeline.results import result_row
from schemas import Reason, Status

DEFAULT_USER_AGENT = "webpairs/0.1 (image-text dataset builder; honours X-Robots-Tag noai)"
DEFAULT_DISALLOWED = ("noai", "noimageai", "noindex", "noimageindex")
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class DownloadConfig:
    threads: int = 64  # requests in flight per worker
    connect_timeout: float = 10.0
    read_timeout: float = 10.0  # longest silence between two reads
    deadline: float = 30.0  # whole attempt, redirects and body included
    retries: int = 2  # extra attempts on transient failures
    backoff: float = 0.5  # first retry waits ~backoff, then doubles (jittered)
    max_retry_wait: float = 10.0  # a Retry-After longer than this is not waited for
    user_agent: str = DEFAULT_USER_AGENT
    user_agent_token: str = "webpairs"  # the name UA-scoped X-Robots-Tag lines address
    max_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 5
    disallowed_directives: tuple[str, ...] = DEFAULT_DISALLOWED  # empty: ignore X-Robots-Tag
    allow_private_networks: bool = (
        False  # SSRF guard: refuse loopback/private/link-local/... addresses
    )
    allow_networks: tuple[str, ...] = ()  # CIDRs exempt from the guard, e.g. ("127.0.0.1/32",)
    dns_timeout: float = 5.0
    dns_ttl: float = 300.0  # per-worker DNS cache lifetime (failures: 60 s)
    per_host: int = 16  # requests in flight to one host per worker (0: no cap)
    host_interval: float = 0.0  # seconds between two request starts to one host per worker
    host_buckets: int = (
        8  # a host's URLs are spread over at most this many workers (0: no grouping)
    )
    breaker_failures: int = 20  # consecutive transient failures that pause a host (0: never)
    breaker_cooldown: float = 120.0
    robots: bool = False  # honour robots.txt for user_agent_token (RFC 9309)
    opt_out_domains: tuple[str, ...] = ()  # domains (and their subdomains) never fetched


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


class Crawler:
    """What one worker's download threads share: connection pools, the DNS cache, per-host
    politeness and the robots.txt cache. Built in DoFn.setup(), never pickled."""

    def __init__(self, cfg: DownloadConfig):
        self.cfg = cfg
        # Many hosts; up to one kept-alive connection per thread per host; never blocks on the pool.
        self.http = urllib3.PoolManager(
            num_pools=512, maxsize=cfg.threads, block=False, retries=False
        )
        self.resolver = Resolver(timeout=cfg.dns_timeout, ttl=cfg.dns_ttl)
        self.hosts = HostPolicy(
            cfg.per_host, cfg.host_interval, cfg.breaker_failures, cfg.breaker_cooldown
        )
        self.robots = RobotsCache(cfg.user_agent_token) if cfg.robots else None
        self.opt_out = frozenset(d.lower().strip(".") for d in cfg.opt_out_domains)

    def close(self) -> None:
        self.http.clear()
        self.resolver.close()


def load_domain_list(path: str | None) -> tuple[str, ...]:
    """Domains, one per line, never to be fetched (with their subdomains)."""
    from pipeline.read import read_list_file

    return tuple(d.strip(".") for d in read_list_file(path, "--opt-out-domains"))


def domain_opted_out(host: str, domains: frozenset[str]) -> str | None:
    """The listed domain that `host` is (or is a subdomain of), or None."""
    labels = host.lower().strip(".").split(".")
    for i in range(len(labels)):
        candidate = ".".join(labels[i:])
        if candidate in domains:
            return candidate
    return None


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
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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
                Reason.TIMEOUT, f"deadline of {cfg.deadline}s passed while reading the body"
            )
        _set_read_timeout(resp, min(cfg.read_timeout, remaining))
        chunk = resp.read1(_CHUNK, decode_content=False)
        if not chunk:
            break
        if inflater is not None:
            # Bounded inflation: a small compressed body cannot expand past the byte cap.
            chunk = inflater.decompress(chunk, max_bytes + 1 - size)
            if inflater.unconsumed_tail:
                raise _Failure(Reason.TOO_LARGE, f"body inflates past {max_bytes} bytes")
        size += len(chunk)
        if size > max_bytes:
            raise _Failure(Reason.TOO_LARGE, f"body exceeds {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _open(url: str, crawler: Crawler, headers: dict, timeout: urllib3.Timeout):
    """One request to the address we checked (pinned), with Host and SNI of the URL's host."""
    cfg = crawler.cfg
    parts = urlsplit(url)
    host, scheme = parts.hostname or "", parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    ips = crawler.resolver.resolve(host)
    for ip in ips:  # every address a name has, so a mixed answer cannot smuggle one in
        check_address(ip, cfg.allow_private_networks, cfg.allow_networks)
    pool_kwargs = {"assert_hostname": host, "server_hostname": host} if scheme == "https" else {}
    pool = crawler.http.connection_from_host(ips[0], port, scheme, pool_kwargs=pool_kwargs)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if parts.port and parts.port != (443 if scheme == "https" else 80):
        host_header += f":{parts.port}"
    resp = pool.urlopen(
        "GET",
        target,
        headers={**headers, "Host": host_header},
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
    try:
        for _hop in range(cfg.max_redirects + 1):
            remaining = deadline_at - time.monotonic()
            if remaining <= 0:
                raise _Failure(
                    Reason.TIMEOUT, f"deadline of {cfg.deadline}s passed during redirects"
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
            current = urljoin(current, location)
            if urlsplit(current).scheme not in ("http", "https"):
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
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > limit:
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
    except Exception as e:  # urllib3/socket/ssl/DNS errors, classified
        reason, detail = _classify(e)
        return Fetched(False, reason, detail, final_url=current)
    finally:
        if resp is not None:
            resp.release_conn() if resp.isclosed() else resp.close()


def is_retryable(f: Fetched) -> bool:
    return Reason.is_transient(f.reason)


def _robots_fetch(crawler: Crawler):
    def fetch_robots(url: str) -> tuple[int | None, bytes | None]:
        got = fetch_once(
            url, crawler.cfg, crawler, max_bytes=512 * 1024
        )  # RFC 9309: at least 500 KiB
        if got.ok:
            return got.http_status, got.data
        return got.http_status, None  # an HTTP error keeps its status; a network failure has none

    return fetch_robots


def fetch(url: str, cfg: DownloadConfig, crawler: Crawler) -> Fetched:
    """fetch_once with the host's politeness rules and bounded, jittered retries."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    listed = domain_opted_out(host, crawler.opt_out) if crawler.opt_out else None
    if listed:
        return Fetched(False, Reason.OPTED_OUT, f"domain {listed} is on the opt-out list")
    if crawler.robots is not None:
        origin = f"{parts.scheme}://{parts.netloc}"
        if not crawler.robots.allowed(origin, url, _robots_fetch(crawler)):
            return Fetched(
                False,
                Reason.ROBOTS,
                f"robots.txt of {parts.netloc} disallows this path for {cfg.user_agent_token}",
            )
    result = Fetched(False, Reason.NETWORK, "not attempted")
    for attempt in range(cfg.retries + 1):
        try:
            with crawler.hosts.slot(host, time.monotonic() + cfg.deadline):
                result = fetch_once(url, cfg, crawler)
        except CircuitOpen as e:
            return Fetched(False, Reason.CIRCUIT_OPEN, str(e))
        except HostBusy as e:
            result = Fetched(False, Reason.TIMEOUT, str(e))
        transient = is_retryable(result)
        crawler.hosts.record(host, transient)
        if result.retry_after is not None and result.http_status in (429, 503):
            crawler.hosts.penalize(host, min(result.retry_after, cfg.max_retry_wait))
        if result.ok or not transient or attempt == cfg.retries:
            return result
        wait = cfg.backoff * (2**attempt) * random.uniform(0.5, 1.5)
        if result.retry_after is not None:
            if result.retry_after > cfg.max_retry_wait:
                return result
            wait = max(wait, result.retry_after)
        time.sleep(wait)
    return result


def fetch_row(pair: dict, crawler: Crawler, cfg: DownloadConfig) -> dict:
    """A pair -> a result row; on success the original bytes ride along in `_data`."""
    got = fetch(pair["url"].strip(), cfg, crawler)
    if not got.ok:
        return result_row(
            pair, Status.FAILED, reason=got.reason, error=got.error, http_status=got.http_status
        )
    mime = sniff_mime(got.data)
    row = result_row(
        pair,
        Status.OK,
        http_status=got.http_status,
        bytes=len(got.data),
        mime=mime,
        sha256=hashlib.sha256(got.data).hexdigest(),
    )
    if mime is None:
        head = got.data[:32].decode("latin-1").strip()
        row.update(
            status=Status.FAILED,
            reason=Reason.NOT_IMAGE,
            error=f"body is not an image (starts {head[:24]!r})",
        )
        return row
    row["_data"] = got.data
    return row


def host_bucket(pair: dict, buckets: int) -> tuple[str, int]:
    """(host, sub-bucket): a host's URLs go to at most `buckets` groups, hence few workers."""
    host = (urlsplit(pair["url"].strip()).hostname or "").lower()
    return host, int(pair["key"][:8], 16) % buckets


class DownloadImages(beam.PTransform):
    """Pairs -> result rows (ok with `_data`, or failed with a reason), many requests in flight.

    With `host_buckets`, pairs are first grouped by (host, sub-bucket) so that the per-worker
    politeness limits hold for the job as a whole (at most host_buckets x per_host requests in
    flight to one host); sub-buckets keep a huge host from becoming one giant element.
    """

    def __init__(self, cfg: DownloadConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pairs):
        cfg = self.cfg
        fn = ThreadedMapFn(
            partial(fetch_row, cfg=cfg),
            cfg.threads,
            setup_fn=partial(Crawler, cfg),
            stage="download",
        )
        if cfg.host_buckets:
            pairs = (
                pairs
                | "KeyByHost" >> beam.Map(lambda p: (host_bucket(p, cfg.host_buckets), p))
                | "GroupByHost" >> beam.GroupByKey()
                | "Ungroup" >> beam.FlatMap(lambda kv: kv[1])
            )
        return pairs | "Fetch" >> beam.ParDo(fn)
