"""Downloading images: one classified result row per URL, never an exception.

    row = fetch_row(pair, Crawler(cfg), cfg)
    rows = pairs | "DownloadImages" >> DownloadImages(DownloadConfig(threads=64))

Around each request (pipeline/crawl/fetch.py: deadline, byte cap, redirects, SSRF guard, opt-out
headers): the opt-out domain list, robots.txt, the host's concurrency cap and interval, bounded
retries with jittered backoff on transient failures (timeouts, connection errors, 429, 5xx;
Retry-After honoured up to a cap), the circuit breaker, and magic-byte sniffing (an HTML page
is not an image whatever its Content-Type says).
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import apache_beam as beam
import urllib3

from pipeline.crawl.concurrency import ThreadedMapFn
from pipeline.crawl.deadline import DEADLINE_POOL_CLASSES
from pipeline.crawl.fetch import Fetched, fetch_once, is_retryable
from pipeline.crawl.hosts import CircuitOpen, HostBusy, HostPolicy, RobotsCache
from pipeline.crawl.images import sniff_mime
from pipeline.crawl.netsafety import Resolver
from pipeline.results import result_row
from schemas import Reason, Status

DEFAULT_USER_AGENT = "webpairs/0.1 (image-text dataset builder; honours X-Robots-Tag noai)"


DEFAULT_DISALLOWED = ("noai", "noimageai", "noindex", "noimageindex")


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


class Crawler:
    """What one worker's download threads share: connection pools, the DNS cache, per-host
    politeness and the robots.txt cache. Built in DoFn.setup(), never pickled; close() in
    DoFn.teardown(). `resolver` replaces the system's (getaddrinfo) one."""

    def __init__(self, cfg: DownloadConfig, resolver: Resolver | None = None):
        self.cfg = cfg
        # Many hosts; up to one kept-alive connection per thread per host; never blocks on the pool.
        self.http = urllib3.PoolManager(
            num_pools=512, maxsize=cfg.threads, block=False, retries=False
        )
        self.http.pool_classes_by_scheme = DEADLINE_POOL_CLASSES  # headers under the deadline
        self.resolver = resolver or Resolver(timeout=cfg.dns_timeout, ttl=cfg.dns_ttl)
        self.hosts = HostPolicy(
            cfg.per_host, cfg.host_interval, cfg.breaker_failures, cfg.breaker_cooldown
        )
        self.robots = RobotsCache(cfg.user_agent_token) if cfg.robots else None
        self.opt_out = frozenset(d.lower().strip(".") for d in cfg.opt_out_domains)

    def close(self) -> None:
        keys = self.http.pools.keys()  # noqa: SIM118 - the container refuses plain iteration
        pools = [self.http.pools.get(key) for key in keys]
        self.http.clear()  # forgets the pools; closing their kept-alive sockets is up to us
        for pool in pools:
            if pool is not None:
                pool.close()
        self.resolver.close()


def load_domain_list(path: str | None) -> tuple[str, ...]:
    """Domains, one per line, never to be fetched (with their subdomains)."""
    from pipeline.io.url_lists import read_list_file

    return tuple(d.strip(".") for d in read_list_file(path, "--opt-out-domains"))


def domain_opted_out(host: str, domains: frozenset[str]) -> str | None:
    """The listed domain that `host` is (or is a subdomain of), or None."""
    labels = host.lower().strip(".").split(".")
    for i in range(len(labels)):
        candidate = ".".join(labels[i:])
        if candidate in domains:
            return candidate
    return None


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
        except HostBusy as e:  # our own politeness queue, not the host's fault: not recorded
            result = Fetched(False, Reason.TIMEOUT, str(e))
            transient = True
        else:
            transient = is_retryable(result)
            # a host that trickles past the deadline is failing too, though retrying is futile
            crawler.hosts.record(host, transient or result.reason == Reason.DEADLINE)
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


def fetch_images_fn(cfg: DownloadConfig) -> ThreadedMapFn:
    """DownloadImages' DoFn: fetch_row on `cfg.threads` threads sharing one Crawler."""
    return ThreadedMapFn(
        partial(fetch_row, cfg=cfg), cfg.threads, setup_fn=partial(Crawler, cfg), stage="download"
    )


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
        if cfg.host_buckets:
            pairs = (
                pairs
                | "KeyByHost" >> beam.Map(lambda p: (host_bucket(p, cfg.host_buckets), p))
                | "GroupByHost" >> beam.GroupByKey()
                | "Ungroup" >> beam.FlatMap(lambda kv: kv[1])
            )
        return pairs | "Fetch" >> beam.ParDo(fetch_images_fn(cfg))
