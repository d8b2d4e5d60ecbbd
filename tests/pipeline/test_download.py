"""fetch() against a real loopback server: every failure classified, within its deadline."""

import socket
import time

import pytest
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from pipeline.crawl.download import Crawler, DownloadConfig, fetch, fetch_images_fn, fetch_row
from pipeline.crawl.fetch import opted_out
from pipeline.crawl.netsafety import Resolver

CFG = DownloadConfig(
    allow_private_networks=True,
    deadline=2.0,
    read_timeout=1.0,
    connect_timeout=1.0,
    retries=1,
    backoff=0.05,
    max_bytes=1 << 20,
)


@pytest.fixture(scope="module")
def http():
    return Crawler(CFG)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing.jpg", "http_404"),
        ("/always500/a.jpg", "http_503"),
        ("/big.jpg", "too_large"),
        ("/big-chunked.jpg", "too_large"),
        ("/loop", "too_many_redirects"),
        ("/noai.jpg", "opted_out"),
    ],
)
def test_failures_are_classified(site, http, path, reason):
    got = fetch(site.url(path), CFG, http)
    assert not got.ok and got.reason == reason and got.error


def test_trickling_server_cannot_extend_the_deadline(site, http):
    cfg = DownloadConfig(allow_private_networks=True, deadline=1.5, read_timeout=1.0, retries=0)
    start = time.monotonic()
    got = fetch(site.url("/slow.jpg"), cfg, Crawler(cfg))
    assert got.reason == "deadline"
    assert time.monotonic() - start < cfg.deadline + 0.5  # bytes arrive every 0.5 s, forever


def test_a_deadline_failure_is_not_retried_but_counts_against_the_host(site, http):
    cfg = DownloadConfig(
        allow_private_networks=True, deadline=1.0, read_timeout=1.0, retries=2, breaker_failures=1
    )
    crawler = Crawler(cfg)
    start = time.monotonic()
    got = fetch(site.url("/slow-headers.jpg"), cfg, crawler)
    assert got.reason == "deadline"
    assert time.monotonic() - start < 2 * cfg.deadline  # one attempt, not three
    assert fetch(site.url("/a.jpg"), cfg, crawler).reason == "circuit_open"


def test_retry_recovers_from_one_500(site, http):
    got = fetch(site.url("/flaky/x.jpg"), CFG, http)
    assert got.ok and got.http_status == 200 and site.hits["/flaky/x.jpg"] == 2


def test_retry_after_is_honoured(site, http):
    start = time.monotonic()
    got = fetch(
        site.url("/ratelimited.jpg"),
        DownloadConfig(allow_private_networks=True, retries=1, backoff=0.01),
        http,
    )
    assert got.ok and time.monotonic() - start >= 0.9  # Retry-After: 1


def test_redirect_is_followed(site, http):
    got = fetch(site.url("/redirect.jpg"), CFG, http)
    assert got.ok and got.final_url.endswith("/img/coffee.jpg")


def test_connection_refused_is_connect(http):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    got = fetch(
        f"http://127.0.0.1:{port}/a.jpg",
        DownloadConfig(allow_private_networks=True, retries=0),
        http,
    )
    assert got.reason == "connect"


def test_html_served_as_jpeg_is_not_an_image(site, http):
    row = fetch_row({"url": site.url("/html.jpg"), "caption": "x", "key": "k"}, http, CFG)
    assert (row["status"], row["reason"]) == ("failed", "not_image")


def test_ok_row_carries_bytes_and_hash(site, http):
    row = fetch_row({"url": site.url("/img/coffee.jpg"), "caption": "c", "key": "k"}, http, CFG)
    assert row["status"] == "ok" and row["mime"] == "image/jpeg"
    assert row["bytes"] == len(row["_data"]) == len(site.files["/img/coffee.jpg"][0])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["noai"], "noai"),
        (["noindex, nofollow"], "noindex"),
        (["otherbot: noai"], None),  # addressed to another crawler
        (["webpairs: noimageai"], "noimageai"),
        (["WebPairs: NoAI"], "noai"),
        (["all"], None),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        ([], None),
    ],
)
def test_x_robots_tag(headers, expected):
    assert (
        opted_out(headers, ("noai", "noimageai", "noindex", "noimageindex"), "webpairs") == expected
    )


def test_x_robots_tag_can_be_ignored():
    assert opted_out(["noai"], (), "webpairs") is None


def test_waiting_for_our_own_per_host_turn_never_trips_the_hosts_breaker(site, web_images):
    # one request at a time, 0.4 s apart, a 0.5 s deadline: most of 6 concurrent requests
    # cannot get a turn. That is our politeness, not the host failing.
    from concurrent.futures import ThreadPoolExecutor

    cfg = DownloadConfig(
        allow_private_networks=True,
        per_host=1,
        host_interval=0.4,
        deadline=0.5,
        retries=0,
        breaker_failures=2,
    )
    crawler = Crawler(cfg)
    image = sorted(web_images)[0]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: fetch(site.url(f"{image}?i={i}"), cfg, crawler), range(6)))
    assert sum(g.ok for g in got) >= 1
    assert sum(g.reason == "timeout" and "no turn" in g.error for g in got) >= 2
    time.sleep(0.5)
    assert fetch(site.url(image), cfg, crawler).ok  # the breaker stayed closed


def test_a_bug_in_our_code_fails_the_job_instead_of_becoming_a_network_failure(site):
    def lookup(host):  # a resolver hook with a bug: getaddrinfo needs a port
        return socket.getaddrinfo(host)

    crawler = Crawler(CFG, Resolver(lookup=lookup))
    pair = {"url": f"http://bug.test:{site.url('').rsplit(':', 1)[1]}/a.jpg", "caption": "c"}
    with pytest.raises(TypeError, match="port"):
        fetch_row({**pair, "key": "k"}, crawler, CFG)


def test_teardown_closes_the_crawlers_connections_and_resolver(site):
    fn = fetch_images_fn(CFG)  # the DoFn DownloadImages runs, through its lifecycle
    fn.setup()
    fn.start_bundle()
    pair = {"url": site.url("/img/coffee.jpg"), "caption": "c", "key": "k"}
    out = [*fn.process(pair, GlobalWindow(), MIN_TIMESTAMP), *fn.finish_bundle()]
    assert [o.value["status"] for o in out] == ["ok"]
    crawler = fn._resource
    port = int(site.url("").rsplit(":", 1)[1])
    pool = crawler.http.connection_from_host("127.0.0.1", port, "http")  # the one it used
    assert len(crawler.http.pools) == 1 and pool.num_connections == 1
    fn.teardown()
    assert len(crawler.http.pools) == 0 and pool.pool is None  # its kept-alive socket closed
    with pytest.raises(RuntimeError, match="shutdown"):  # the resolver's threads are gone
        crawler.resolver.resolve("localhost")
