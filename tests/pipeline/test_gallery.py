"""The audit gallery: a seeded, bounded sample per removal reason, each removed image beside its
survivor or the evaluation image it matched, and the CLIP-score cut from both sides -- built by
a real Beam pipeline from light rows, thumbnails made only for the sampled rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from PIL import Image

from pipeline.accounting.gallery import BottomKPerSection, Gallery, GalleryConfig, sample_order
from pipeline.accounting.report import main as inspect_main
from pipeline.accounting.report import render_gallery_text, render_html
from pipeline.curation.decontaminate import found_detail
from pipeline.results import decision
from pipeline.scoring.clip_filter import ClipScoreConfig, detail_score, keep_by_score
from schemas import Reason, Stats, Status
from schemas.imagehash import dhash, hamming, phash
from tests.conftest import encode

PER_REASON = 4


def _image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # blocky: distinct hashes
    return Image.fromarray(pixels).resize((80, 60), Image.NEAREST)


def _row(key: str, i: int, **values) -> dict:
    im = _image(i)
    return {
        "key": key,
        "url": f"http://example.test/{key}.png",
        "caption": f"caption of {key}",
        "status": Status.OK,
        "reason": None,
        "error": None,
        "duplicate_of": None,
        "phash": phash(im),
        "dhash": dhash(im),
        "clip_score": None,
        "original_width": 80,
        "original_height": 60,
        "_image": encode(im, "PNG"),
        "_ext": "png",
        **values,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("eval")
    (folder / "class0").mkdir()
    _image(100).save(folder / "class0" / "a.png")
    rows = [_row(f"k{i:02d}", i) for i in range(40)]
    for i in range(10):  # scored, as ScorePairs leaves them: the kept side of the cut at 0.3
        rows[i]["clip_score"] = 0.3 + 0.05 * i
    removed = (
        # near duplicates of k00..k09
        [decision(f"k{10 + i:02d}", Status.DUPLICATE, Reason.NEAR_DUPLICATE, f"k{i:02d}", "near") for i in range(10)]
        # copies of the evaluation image
        + [decision(f"k{20 + i}", Status.FILTERED, Reason.CONTAMINATED, error=found_detail("class0/a.png", "phash distance 1")) for i in range(2)]
        + [decision(f"k{22 + i}", Status.FILTERED, Reason.TOO_FEW_WORDS, error="1 word") for i in range(6)]
        # the CLIP-score cut at 0.3: k28..k35 dropped
        + [decision(f"k{28 + i}", Status.FILTERED, Reason.LOW_CLIP_SCORE, error=keep_by_score({"clip_score": 0.02 * i}, ClipScoreConfig(min_score=0.3))[2]) for i in range(8)]
    )  # fmt: skip
    kept = [
        {k: v for k, v in r.items() if not k.startswith("_")} | {"clip_score": 0.3 + 0.05 * i}
        for i, r in enumerate(rows[:10])
    ]
    rejected = [
        {"key": f"f{i:02d}", "url": f"http://example.test/gone/{i}", "caption": None,
         "status": Status.FAILED, "reason": "http_404", "error": "HTTP 404", "duplicate_of": None}
        for i in range(12)
    ]  # fmt: skip
    return {
        "eval": folder,
        "rows": rows,
        "removed": removed,
        "kept": kept,
        "rejected": rejected,
    }


def _gallery(data: dict, out: Path, seed: int = 0, shuffle: int | None = None) -> dict:
    lists = {k: list(data[k]) for k in ("rows", "removed", "kept", "rejected")}
    if shuffle is not None:
        for values in lists.values():
            random.Random(shuffle).shuffle(values)
    cfg = GalleryConfig(str(out), per_reason=PER_REASON, seed=seed, eval_source=str(data["eval"]))
    with test_pipeline.TestPipeline() as p:
        inputs = {
            name: p | f"Create{name}" >> beam.Create(lists[source])
            for name, source in (
                ("rejected", "rejected"),
                ("removed", "removed"),
                ("kept", "kept"),
                ("images", "rows"),
            )
        }
        _ = inputs | Gallery(cfg)
    return json.loads((out / "report" / "gallery.json").read_text())


@pytest.fixture(scope="module")
def gallery(data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("out")
    return _gallery(data, out), out


def _section(gallery: dict, name: str) -> list[dict]:
    return next(s["items"] for s in gallery["sections"] if s["section"] == name)


def _thumb(out: Path, shown: dict) -> Image.Image:
    im = Image.open(out / shown["thumb"])
    assert im.format == "JPEG" and list(im.size) == shown["thumb_size"]
    return im


def test_each_reason_shows_its_bottom_k_by_seeded_hash(gallery, data):
    g, _ = gallery
    names = {s["section"] for s in g["sections"]}
    assert names == {
        "duplicate:near_duplicate",
        "filtered:contaminated",
        "filtered:too_few_words",
        "filtered:low_clip_score",
        "failed:http_404",
        "clip_score:kept_lowest",
        "clip_score:kept_highest",
        "clip_score:dropped_lowest",
        "clip_score:dropped_highest",
    }
    near = [d["key"] for d in data["removed"] if d["reason"] == Reason.NEAR_DUPLICATE]
    expected = sorted(near, key=lambda k: sample_order(k, 0))[:PER_REASON]
    assert [it["key"] for it in _section(g, "duplicate:near_duplicate")] == expected
    assert len(_section(g, "filtered:contaminated")) == 2  # all there are
    assert all(len(s["items"]) <= PER_REASON for s in g["sections"])


def test_a_near_duplicate_stands_beside_its_survivor_with_the_hash_distances(gallery, data):
    g, out = gallery
    rows = {r["key"]: r for r in data["rows"]}
    for item in _section(g, "duplicate:near_duplicate"):
        survivor = item["survivor"]
        assert survivor["key"] == item["duplicate_of"] == f"k{int(item['key'][1:]) - 10:02d}"
        assert (
            item["caption"] == rows[item["key"]]["caption"]
        )  # the row's, though a decision was sampled
        assert item["distances"] == {
            h: hamming(rows[item["key"]][h], rows[survivor["key"]][h]) for h in ("phash", "dhash")
        }
        assert _thumb(out, item).size == (80, 60) and _thumb(out, survivor).size == (80, 60)


def test_a_contaminated_sample_stands_beside_the_evaluation_image_it_matched(gallery):
    g, out = gallery
    for item in _section(g, "filtered:contaminated"):
        assert item["eval"]["id"] == "class0/a.png"
        thumb = np.asarray(_thumb(out, item["eval"]), dtype=float)
        # the evaluation image (JPEG-encoded), not the crawled one
        assert np.abs(thumb - np.asarray(_image(100), dtype=float)).mean() < 20
        assert np.abs(thumb - np.asarray(_image(int(item["key"][1:])), dtype=float)).mean() > 40


def test_the_clip_score_cut_is_shown_from_both_sides(gallery):
    g, _ = gallery
    scores = {s["section"]: [it["clip_score"] for it in s["items"]] for s in g["sections"]}
    kept = [0.3 + 0.05 * i for i in range(10)]
    assert scores["clip_score:kept_lowest"] == pytest.approx(kept[:PER_REASON])
    assert scores["clip_score:kept_highest"] == pytest.approx(kept[::-1][:PER_REASON])
    dropped = [0.02 * i for i in range(8)]
    assert scores["clip_score:dropped_highest"] == pytest.approx(dropped[::-1][:PER_REASON])
    assert scores["clip_score:dropped_lowest"] == pytest.approx(dropped[:PER_REASON])


def test_thumbnails_are_made_only_for_the_rows_shown(gallery):
    g, out = gallery
    items = [it for s in g["sections"] for it in s["items"]]
    shown = {it["key"] for it in items if it.get("thumb")}
    shown |= {it["survivor"]["key"] for it in items if "survivor" in it}
    assert len(list((out / "report" / "thumbs").glob("*.jpg"))) == len(shown) < 40
    assert len(list((out / "report" / "eval").glob("*.jpg"))) == 1
    failed = _section(g, "failed:http_404")
    assert len(failed) == PER_REASON and not any(it.get("thumb") for it in failed)


def test_the_sample_is_the_same_whatever_the_input_order_and_changes_with_the_seed(
    gallery, data, tmp_path
):
    g, _ = gallery
    again = _gallery(data, tmp_path / "shuffled", shuffle=1)
    assert again == g
    other = _gallery(data, tmp_path / "seed1", seed=1)
    assert [it["key"] for it in _section(other, "duplicate:near_duplicate")] != [
        it["key"] for it in _section(g, "duplicate:near_duplicate")
    ]


def test_bottom_k_is_the_same_however_the_rows_are_split_into_bundles():
    fn = BottomKPerSection(3)
    rows = [(f"s{i % 2}", (sample_order(f"k{i}", 0), f"k{i}", {"i": i})) for i in range(50)]
    expected = {
        s: sorted((r for t, r in rows if t == s), key=lambda r: (r[0], r[1]))[:3]
        for s in ("s0", "s1")
    }
    for seed in range(3):
        shuffled = random.Random(seed).sample(rows, len(rows))
        accs = [fn.create_accumulator() for _ in range(4)]
        for i, row in enumerate(shuffled):
            accs[i % (seed + 2)] = fn.add_input(accs[i % (seed + 2)], row)
        assert fn.extract_output(fn.merge_accumulators(accs)) == expected


def test_low_clip_score_details_read_back_as_the_score():
    for cfg, threshold in (
        (ClipScoreConfig(min_score=0.3), None),
        (ClipScoreConfig(top_fraction=0.5), 0.25),
    ):
        _, reason, detail = keep_by_score({"clip_score": 0.1234}, cfg, threshold)
        assert reason == Reason.LOW_CLIP_SCORE and detail_score(detail) == pytest.approx(0.1234)
    assert detail_score("no clip_score (the model could not read the image)") is None


def test_report_and_inspect_show_the_gallery(gallery, capsys):
    g, out = gallery
    stats = Stats(
        input=60, written=10, filtered={"contaminated": 2}, duplicate={"near_duplicate": 10}
    )
    page = render_html(stats, None, None, g)
    assert 'id="gallery-duplicate-near_duplicate"' in page and "(10 rows, 4 shown)" in page
    assert page.count("survivor</span>") == PER_REASON
    assert page.count("evaluation image</span>") == 2
    text = render_gallery_text(g, str(out))
    assert "survivor k0" in text and "evaluation item class0/a.png" in text
    (out / "stats.json").write_text(stats.to_json())
    assert inspect_main([str(out), "--gallery"]) == 0
    printed = capsys.readouterr().out
    assert "audit gallery" in printed and str(out / "report" / "thumbs") in printed
