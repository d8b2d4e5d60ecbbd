"""The SSRF guard against names, not IP literals: a name that resolves to loopback is refused,
a name whose answers change between two lookups (DNS rebinding) never reaches the address it
changes to, and a name's other addresses are tried when connecting to the first fails.

The names' answers come from the Resolver's `lookup` hook (a stand-in DNS server). Every address
in them is on loopback: 127.0.0.1 (the test site, let through by --allow-networks 127.0.0.1/32,
so it plays the public server) and 127.0.0.2, where a trap listens on the site's port and
counts connections (the internal service an attacker wants reached, refused by the guard).
No test connects, or could connect, outside 127.0.0.0/8."""

from __future__ import annotations

import itertools
import socket

import pytest

from pipeline.crawl.download import Crawler, DownloadConfig, fetch_row
from pipeline.crawl.netsafety import Resolver

CFG = DownloadConfig(
    allow_networks=("127.0.0.1/32",),
    deadline=2.0,
    connect_timeout=1.0,
    read_timeout=1.0,
    retries=0,
    host_buckets=0,
)


class Trap:
    """A listener on 127.0.0.2 at `port`; `connections()` counts those it was sent. Nothing
    accepts them meanwhile, so a connection that happened waits in the queue to be counted."""

    def __init__(self, port: int):
        self.sock = socket.create_server(("127.0.0.2", port))
        self.sock.setblocking(False)

    def connections(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1


@pytest.fixture
def trap(site):
    t = Trap(int(_port(site)))
    yield t
    t.sock.close()


class Zone:
    """Names -> successive answers (the last one repeats), and a log of every lookup."""

    def __init__(self, **answers: list[list[str]]):
        self.answers = {
            name.replace("_", "-") + ".test": itertools.chain(a, itertools.repeat(a[-1]))
            for name, a in answers.items()
        }
        self.asked: list[str] = []

    def lookup(self, host: str) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return next(self.answers[host])

    def crawler(self, cfg: DownloadConfig = CFG) -> Crawler:
        return Crawler(cfg, Resolver(ttl=0, lookup=self.lookup))  # ttl 0: ask on every request


def _get(crawler: Crawler, url: str, cfg: DownloadConfig = CFG) -> dict:
    return fetch_row({"url": url, "caption": "c", "key": "0" * 24}, crawler, cfg)


def _port(site) -> str:
    return site.base.rsplit(":", 1)[1]


def test_a_name_that_resolves_to_loopback_is_refused_without_connecting(site, trap):
    zone = Zone(intranet=[["127.0.0.2"]])
    row = _get(zone.crawler(), f"http://intranet.test:{_port(site)}/img/coffee.jpg")
    assert row["reason"] == "blocked_address" and "127.0.0.2" in row["error"]
    assert trap.connections() == 0


def test_localhost_resolved_by_the_system_is_refused(site):
    cfg = DownloadConfig(retries=0, host_buckets=0)  # the guard as shipped; getaddrinfo's answer
    row = _get(Crawler(cfg), f"http://localhost:{_port(site)}/img/coffee.jpg", cfg)
    assert row["reason"] == "blocked_address"
    assert "/img/coffee.jpg" not in site.hits


def test_rebinding_between_check_and_connect_never_reaches_the_new_address(site, trap):
    # Each lookup flips the answer: public-looking, then internal, then public again...
    zone = Zone(rebind=[["127.0.0.1"], ["127.0.0.2"]] * 3)
    crawler = zone.crawler()
    rows = [_get(crawler, f"http://rebind.test:{_port(site)}/img/coffee.jpg") for _ in range(6)]
    # One lookup per request, and the request went to the address that lookup gave: checked
    # and connected to are the same address, so an answer that changes in between is never used.
    assert trap.connections() == 0 and site.hits["/img/coffee.jpg"] == 3
    assert [r["reason"] for r in rows] == [None, "blocked_address"] * 3
    assert zone.asked == ["rebind.test"] * 6


def test_a_redirect_to_a_name_is_checked_at_its_own_hop(site, trap):
    port = _port(site)
    zone = Zone(intranet=[["127.0.0.2"]], rebind=[["127.0.0.1"], ["127.0.0.2"]])
    crawler = zone.crawler()
    to_intranet = site.url(f"/redirect-to?to=http://intranet.test:{port}/x.jpg")
    assert _get(crawler, to_intranet)["reason"] == "blocked_address"
    # The first hop resolves to the site; the name is looked up again at the redirect's hop,
    # where its answer has changed to the internal address.
    back_to_itself = f"http://rebind.test:{port}/redirect-to?to=/img/coffee.jpg"
    assert _get(crawler, back_to_itself)["reason"] == "blocked_address"
    assert trap.connections() == 0 and site.hits["/redirect-to"] == 2
    assert zone.asked == ["intranet.test", "rebind.test", "rebind.test"]


def test_a_name_with_one_blocked_address_among_its_answers_is_refused_whole(site, trap):
    zone = Zone(mixed=[["127.0.0.1", "127.0.0.2"]])
    row = _get(zone.crawler(), f"http://mixed.test:{_port(site)}/img/coffee.jpg")
    assert row["reason"] == "blocked_address"
    assert "/img/coffee.jpg" not in site.hits and trap.connections() == 0


def test_the_next_address_is_tried_when_connecting_to_the_first_fails(site):
    port = int(_port(site))
    closed = socket.socket()
    closed.bind(("127.0.0.3", port))  # bound, not listening: a connection there is refused
    cfg = DownloadConfig(**{**CFG.__dict__, "allow_networks": ("127.0.0.1/32", "127.0.0.3/32")})
    zone = Zone(two=[["127.0.0.3", "127.0.0.1"]], dead=[["127.0.0.3"]])
    try:
        crawler = zone.crawler(cfg)
        row = _get(crawler, f"http://two.test:{port}/img/coffee.jpg", cfg)
        assert row["status"] == "ok" and site.hits["/img/coffee.jpg"] == 1
        assert _get(crawler, f"http://dead.test:{port}/img/coffee.jpg", cfg)["reason"] == "connect"
    finally:
        closed.close()


def test_each_candidate_address_is_checked_before_any_is_tried(site, trap):
    # 127.0.0.3 refuses; the fallback would be 127.0.0.2, which the guard refuses: the name is
    # refused before either is connected to.
    zone = Zone(two=[["127.0.0.3", "127.0.0.2"]])
    cfg = DownloadConfig(**{**CFG.__dict__, "allow_networks": ("127.0.0.3/32",)})
    row = _get(zone.crawler(cfg), f"http://two.test:{_port(site)}/img/coffee.jpg", cfg)
    assert row["reason"] == "blocked_address" and "127.0.0.2" in row["error"]
    assert trap.connections() == 0
