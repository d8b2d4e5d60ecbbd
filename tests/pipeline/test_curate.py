"""The whole curation job on DirectRunner against a real loopback server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.jobs.curate import main
from schemas import Manifest, Stats
from tests.conftest import serve

GOOD = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "camera",
    "china",
    "flower",
]
CAPTIONS = {
    "astronaut": "An astronaut — Eileen Collins, in uniform 🚀",
    "chelsea": "a cat named Chelsea",
    "coffee": "a cup of coffee on a saucer",
    "rocket": "a rocket on the launch pad",
    "hubble_deep_field": "galaxies in the Hubble deep field",
    "camera": "  a cameraman, black and white  ",
    "china": "a temple in China",
    "flower": "a flower in bloom",
}
# path -> expected (status, reason)
BAD = {
    "/missing.jpg": ("failed", "http_404"),
    "/always500/x.jpg": ("failed", "http_503"),
    "/slow.jpg": ("failed", "deadline"),
    "/big.jpg": ("failed", "too_large"),
    "/big-chunked.jpg": ("failed", "too_large"),
    "/truncated.jpg": ("failed", "decode"),
    "/html.jpg": ("failed", "not_image"),
    "/loop": ("failed", "too_many_redirects"),
    "/noai.jpg": ("failed", "opted_out"),
}
RECOVERING = ["/flaky/a.jpg", "/redirect.jpg", "/otherbot-noai.jpg"]


def _rows(site) -> list[dict]:
    rows = [
        {"url": site.url(f"/img/{n}.jpg"), "caption": CAPTIONS[n], "source": f"src-{n}"}
        for n in GOOD
    ]
    rows += [
        {"url": site.url(f"/img/{n}.png"), "caption": CAPTIONS[n] + " (png)", "source": "png"}
        for n in GOOD[:3]
    ]
    rows += [{"url": site.url(p), "caption": f"bad {p}", "source": "bad"} for p in BAD]
    rows += [{"url": site.url(p), "caption": f"recovers {p}", "source": "ok"} for p in RECOVERING]
    # exact duplicates of a URL, spelled differently (host case, default port, fragment)
    port_url = site.url("/img/coffee.jpg")
    rows.append(
        {
            "url": port_url.replace("127.0.0.1", "127.0.0.1") + "#frag",
            "caption": "zzz later",
            "source": "dup",
        }
    )
    rows.append(
        {"url": port_url.replace("http://", "HTTP://"), "caption": "zzz dup", "source": "dup"}
    )
    # invalid rows
    rows.append({"url": None, "caption": "no url", "source": "inv"})
    rows.append({"url": "ftp://example.com/a.jpg", "caption": "ftp", "source": "inv"})
    rows.append({"url": "http://[::1/a.jpg", "caption": "broken ipv6", "source": "inv"})
    rows.append({"url": "http://example.com/" + "a" * 5000, "caption": "long", "source": "inv"})
    return rows


def _write_parquet(rows: list[dict], path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _curate(inp: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "--input", str(inp), "--output", str(out),
            "--resize-mode", "keep_ratio", "--image-size", "128",
            "--samples-per-shard", "4", "--timeout", "1.5", "--read-timeout", "1",
            "--retries", "1", "--max-bytes", str(2 * 1024 * 1024),
            "--save-additional-columns", "source", "--recipe", "none", "--allow-private-networks",
            *extra,
        ]
    )  # fmt: skip


def _tar_digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "shards").glob("*.tar"))
    }


@pytest.fixture(scope="module")
def curated(web_images, tmp_path_factory):
    """One curated run shared by the tests of this module (the slow endpoint costs seconds)."""
    tmp = tmp_path_factory.mktemp("curate")
    with serve(web_images) as site:
        rows = _rows(site)
        inp = _write_parquet(rows, tmp / "urls.parquet")
        out = tmp / "out"
        assert _curate(inp, out) == 0
        site.hits_after_first_run = dict(site.hits)
        yield site, rows, inp, out


def test_shards_read_back_with_webdataset(curated):
    site, rows, _, out = curated
    manifest = Manifest.from_json((out / "manifest.json").read_text())
    urls = sorted(str(out / s.url) for s in manifest.shardlist)
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    by_url = {s["json"]["url"]: s for s in samples}  # .decode() turned KEY.json into a dict
    expected_ok = len(GOOD) + 3 + len(RECOVERING)  # coffee duplicates collapse into one
    assert len(samples) == expected_ok == manifest.total_samples
    for n in GOOD:
        s = by_url[site.url(f"/img/{n}.jpg")]
        assert s["txt"] == CAPTIONS[n]  # byte-identical caption, whitespace and emoji included
        w, h = s["jpg"].size
        assert min(w, h) == 128  # keep_ratio: smaller side to image_size
        meta = s["json"]
        assert meta["status"] == "ok" and meta["source"] == f"src-{n}"
        assert (meta["width"], meta["height"]) == (w, h)
        assert abs(meta["original_width"] / meta["original_height"] - w / h) < 0.02


def test_every_row_accounted_for(curated):
    site, rows, _, out = curated
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()
    assert stats.input == len(rows)
    expected_failed = {}
    for _status, reason in BAD.values():
        expected_failed[reason] = expected_failed.get(reason, 0) + 1
    assert stats.failed == expected_failed
    assert stats.duplicate == {"duplicate_url": 2}
    assert stats.invalid == {
        "missing_url": 1,
        "bad_scheme": 1,
        "unparsable_url": 1,
        "url_too_long": 1,
    }
    assert stats.failed_by_domain["127.0.0.1"] == expected_failed
    rejects = pa.concat_tables(
        [pq.read_table(p) for p in (out / "rejects").glob("*.parquet")]
    ).to_pylist()
    assert len(rejects) == len(rows) - stats.written
    by_url = {r["url"]: r for r in rejects if r["status"] == "failed"}
    for path, (status, reason) in BAD.items():
        assert (by_url[site.url(path)]["status"], by_url[site.url(path)]["reason"]) == (
            status,
            reason,
        )
        assert by_url[site.url(path)]["error"]
    dups = [r for r in rejects if r["status"] == "duplicate"]
    survivor = [
        r
        for r in pa.concat_tables(
            [pq.read_table(p) for p in (out / "shards").glob("*.parquet")]
        ).to_pylist()
        if r["url"] == site.url("/img/coffee.jpg")
    ]
    assert len(survivor) == 1 and {d["duplicate_of"] for d in dups} == {survivor[0]["key"]}


def test_retry_recovers_from_one_500(curated):
    site, *_ = curated
    assert site.hits_after_first_run["/flaky/a.jpg"] == 2
    assert (
        site.hits_after_first_run["/always500/x.jpg"] == 2
    )  # --retries 1: gave up after one retry
    assert site.hits_after_first_run["/missing.jpg"] == 1  # a 404 is not retried


def test_rerun_writes_byte_identical_tars(curated, tmp_path):
    site, rows, inp, out = curated
    first = _tar_digests(out)  # decoded in worker processes: the in-process runner's default
    out2 = tmp_path / "again"
    assert _curate(inp, out2, "--decode-processes", "0") == 0  # decoded in threads
    assert _tar_digests(out2) == first
    assert _curate(inp, out2) == 2  # refuses to clobber a finished run
    assert _curate(inp, out2, "--overwrite") == 0
    assert _tar_digests(out2) == first
    manifest = Manifest.from_json((out / "manifest.json").read_text())
    assert {Path(s.url).name: s.sha256 for s in manifest.shardlist} == first


def test_multi_processing_two_workers_match_single_process(curated, tmp_path):
    site, rows, inp, out = curated
    out2 = tmp_path / "out-mp"
    assert (
        _curate(inp, out2, "--direct_running_mode=multi_processing", "--direct_num_workers=2") == 0
    )
    assert _tar_digests(out2) == _tar_digests(out)
