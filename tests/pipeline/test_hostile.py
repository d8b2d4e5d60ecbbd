"""A crawl meets hostile servers: each case ends as a counted failure with the right reason,
within its deadline, with memory bounded. The loopback server is exempted from the SSRF guard
by its exact address only, so redirects to other private addresses stay refused."""

from __future__ import annotations

import time
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.crawl.download import Crawler, DownloadConfig, fetch_row
from pipeline.crawl.images import ImageConfig, decode_row
from pipeline.crawl.netsafety import BlockedAddress, check_address
from pipeline.jobs.curate import main
from schemas import Stats

CFG = DownloadConfig(
    allow_networks=("127.0.0.1/32",),
    deadline=2.0,
    read_timeout=1.0,
    connect_timeout=1.0,
    retries=0,
    max_bytes=1 << 20,
)


def _outcome(site, path: str, cfg: DownloadConfig = CFG) -> tuple[dict, float]:
    start = time.monotonic()
    row = fetch_row({"url": site.url(path), "caption": "c", "key": "0" * 24}, Crawler(cfg), cfg)
    if row["status"] == "ok":
        row = decode_row(row, ImageConfig())
    return row, time.monotonic() - start


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/slow.jpg", "deadline"),  # trickles a byte every 0.5 s
        ("/slow-headers.jpg", "deadline"),  # trickles its status line and headers
        ("/endless.jpg", "too_large"),  # a body that never ends
        ("/ten-gb.jpg", "too_large"),  # Content-Length: 10 GB
        ("/gzip-bomb.jpg", "too_large"),  # 64 MiB of zeros in 64 KiB of gzip
        ("/pixel-bomb.png", "too_many_pixels"),  # PNG header says 100000 x 100000
        ("/html.jpg", "not_image"),
        ("/loop", "too_many_redirects"),
        ("/redirect-to?to=http://127.0.0.2:9/x.jpg", "blocked_address"),
        ("/redirect-to?to=http://10.0.0.1/x.jpg", "blocked_address"),
        ("/redirect-to?to=http://169.254.169.254/latest/meta-data/", "blocked_address"),
        ("/redirect-to?to=http://[::1]:9/x.jpg", "blocked_address"),
        ("/redirect-to?to=file:///etc/passwd", "bad_scheme"),
        ("/redirect-to?to=http://[::1/x.jpg", "unparsable_url"),
        ("/redirect-to?to=http://127.0.0.1:99999/x.jpg", "unparsable_url"),
        ("/redirect-to?to=http://a..b/x.jpg", "unparsable_url"),  # no IDNA form: empty label
        ("/noai.jpg", "opted_out"),
    ],
)
def test_hostile_case_is_a_counted_failure_within_the_deadline(site, path, reason):
    tracemalloc.start()  # every Python allocation, the server's included; the peak, not the end
    try:
        row, took = _outcome(site, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (row["status"], row["reason"]) == ("failed", reason), row["error"]
    assert took < CFG.deadline + 1.0
    # Never more than the byte cap buffered (a 64 MiB gzip bomb, an endless body), plus
    # a few reads (the compressed one, zlib's output) and the crawler's own objects.
    assert peak < CFG.max_bytes + 768 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_ua_scoped_opt_out_only_binds_its_crawler(site):
    row, _ = _outcome(site, "/otherbot-noai.jpg")
    assert row["status"] == "ok"
    cfg = DownloadConfig(**{**CFG.__dict__, "user_agent_token": "otherbot"})
    assert _outcome(site, "/otherbot-noai.jpg", cfg)[0]["reason"] == "opted_out"


def test_direct_private_addresses_are_refused_without_connecting():
    for ip in (
        "127.0.0.2",
        "10.0.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "100.64.0.1",
        "224.0.0.1",
        "0.0.0.0",
    ):
        with pytest.raises(BlockedAddress):
            check_address(ip, allow_private=False)
    check_address("93.184.216.34", allow_private=False)  # a public address passes
    check_address("127.0.0.1", allow_private=False, allow_networks=("127.0.0.1/32",))


def test_robots_txt_is_honoured(site):
    site.robots = "User-agent: webpairs\nDisallow: /img/coffee\n\nUser-agent: *\nDisallow:\n"
    cfg = DownloadConfig(**{**CFG.__dict__, "robots": True})
    crawler = Crawler(cfg)
    blocked = fetch_row(
        {"url": site.url("/img/coffee.jpg"), "caption": "c", "key": "1" * 24}, crawler, cfg
    )
    allowed = fetch_row(
        {"url": site.url("/img/chelsea.jpg"), "caption": "c", "key": "2" * 24}, crawler, cfg
    )
    assert blocked["reason"] == "robots_disallowed" and allowed["status"] == "ok"
    assert site.hits["/robots.txt"] == 1  # fetched once per host per worker


def test_unreachable_robots_txt_disallows_and_404_allows(site):
    from pipeline.crawl.hosts import robots_from_response

    assert robots_from_response(None, None) == (
        None,
        False,
    )  # unreachable: complete disallow (RFC 9309)
    assert robots_from_response(503, None) == (None, False)
    assert robots_from_response(404, None) == (None, True)  # no robots.txt: everything allowed
    cfg = DownloadConfig(**{**CFG.__dict__, "robots": True})
    assert (
        fetch_row(
            {"url": site.url("/img/coffee.jpg"), "caption": "c", "key": "3" * 24}, Crawler(cfg), cfg
        )["status"]
        == "ok"
    )


def test_opt_out_domain_list_is_never_fetched(site):
    cfg = DownloadConfig(
        **{**CFG.__dict__, "opt_out_domains": ("0.1",)}
    )  # 127.0.0.1 ends in .0.1: a 'subdomain'
    row, _ = _outcome(site, "/img/coffee.jpg", cfg)
    assert row["reason"] == "opted_out" and "/img/coffee.jpg" not in site.hits


def _job(site, tmp_path, paths, *extra) -> Stats:
    pq.write_table(
        pa.Table.from_pylist([{"url": site.url(p), "caption": p} for p in paths]),
        tmp_path / "urls.parquet",
    )
    out = tmp_path / "out"
    args = [
        "--input",
        str(tmp_path / "urls.parquet"),
        "--output",
        str(out),
        "--allow-networks",
        "127.0.0.1/32",
        "--recipe",
        "none",
        *extra,
    ]
    assert main(args) == 0
    return Stats.from_json((out / "stats.json").read_text())


def test_per_host_interval_holds_in_the_server_log(site, tmp_path):
    paths = [
        f"/img/{n}.jpg?v={i}"
        for i, n in enumerate(["coffee", "chelsea", "astronaut", "rocket", "china", "flower"])
    ]
    stats = _job(
        site, tmp_path, paths, "--per-host", "1", "--host-interval", "0.3", "--host-buckets", "1"
    )
    assert stats.written == len(paths)
    starts = sorted(t for t, p in site.log if p.startswith("/img/"))
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # the interval holds between request starts on our side; the server's clock sees them
    # through its own scheduling (tens of ms of jitter on a loaded machine), and without the
    # interval the gaps are a few ms
    assert min(gaps) >= 0.25, gaps


def test_circuit_breaker_fails_a_dead_host_fast(site, tmp_path):
    paths = [f"/always500/{i}.jpg" for i in range(30)]
    stats = _job(
        site,
        tmp_path,
        paths,
        "--breaker-failures",
        "5",
        "--retries",
        "0",
        "--per-host",
        "1",
        "--host-buckets",
        "1",
    )
    assert stats.failed["http_503"] >= 5 and stats.failed.get("circuit_open", 0) > 0
    assert sum(stats.failed.values()) == len(paths)
    hits = sum(n for p, n in site.hits.items() if p.startswith("/always500/"))
    assert hits < len(paths)
