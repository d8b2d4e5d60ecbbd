"""`webpairs select` on a real output: scoring inside select, thresholds, --where rules, balanced
and seeded shards, bytes copied as they are, lineage and accounting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from pipeline.curation.rules import parse_rule, rule_holds
from pipeline.io.reshard import shuffle_order
from pipeline.jobs.curate import main as curate
from pipeline.jobs.select import main as select
from schemas import Manifest, Stats
from tests.pipeline.test_score import (
    digit_tars,
    shard_rows,
    tar_samples,
    tiny_checkpoint,
)
from tests.pipeline.test_score import one_torch_thread as one_torch_thread  # noqa: F401


def reject_rows(out: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in sorted((out / "rejects").glob("*.parquet"))]
    return pa.concat_tables(tables).to_pylist() if tables else []


def tar_order(out: Path) -> list[str]:
    """Sample keys in shard order, then member order inside each tar."""
    import tarfile

    keys = []
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key = m.name.split(".", 1)[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
    return keys


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An unscored webpairs output of 40 digits (in two tar shards), no curation stage."""
    tmp = tmp_path_factory.mktemp("source")
    out = tmp / "out"
    args = ["--input", str(digit_tars(tmp / "tars", 40, per_shard=20)), "--output", str(out)]
    args += ["--input-format", "webdataset", "--recipe", "none", "--image-size", "32"]
    args += ["--encode-format", "png"]
    assert curate(args + ["--samples-per-shard", "20"]) == 0
    return out


@pytest.fixture(scope="module")
def top30(source, checkpoint, tmp_path_factory) -> Path:
    """select scores the source with the checkpoint and keeps DataComp's top 30 %."""
    out = tmp_path_factory.mktemp("top30") / "out"
    args = ["--input", str(source), "--output", str(out), "--recipe", "datacomp_clip_top30"]
    assert select(args + ["--score-checkpoint", str(checkpoint), "--samples-per-shard", "5"]) == 0
    return out


def test_scoring_inside_select_keeps_exactly_the_top_30_percent(top30, source):
    written, rejected = shard_rows(top30), reject_rows(top30)
    assert len(written) + len(rejected) == 40
    scores = sorted((r["clip_score"] for r in written + rejected), reverse=True)
    assert len(written) == math.ceil(0.3 * 40) == 12
    assert min(r["clip_score"] for r in written) == scores[11] > scores[12]
    assert {r["reason"] for r in rejected} == {"low_clip_score"}
    stats = Stats.from_json((top30 / "stats.json").read_text())
    stats.check()
    assert stats.input == 40 and stats.written == 12 and stats.filtered == {"low_clip_score": 28}
    manifest = Manifest.from_json((top30 / "manifest.json").read_text())
    assert manifest.source == str(source) and manifest.scorer["model"] == "smoke"
    assert manifest.total_samples == 12


def test_the_gallery_shows_the_cut_from_both_sides_with_images_from_the_source_tars(top30):
    gallery = json.loads((top30 / "report" / "gallery.json").read_text())
    sections = {s["section"]: s["items"] for s in gallery["sections"]}
    assert set(sections) == {
        "filtered:low_clip_score",
        "clip_score:kept_lowest",
        "clip_score:kept_highest",
        "clip_score:dropped_lowest",
        "clip_score:dropped_highest",
    }
    kept, dropped = sections["clip_score:kept_lowest"], sections["clip_score:dropped_highest"]
    assert dropped[0]["clip_score"] < kept[0]["clip_score"]  # the two sides of the cut
    assert len(sections["filtered:low_clip_score"]) == 8  # of 28, the sample's bound
    for items in sections.values():
        for item in items:  # each read from the source's tars, though select copies only the kept
            with Image.open(top30 / item["thumb"]) as im:
                assert im.size == (32, 32)


def test_shards_are_balanced_and_shuffled_by_the_seed(top30):
    manifest = Manifest.from_json((top30 / "manifest.json").read_text())
    assert [s.nsamples for s in manifest.shardlist] == [4, 4, 4]  # 12 samples, at most 5 a shard
    keys = tar_order(top30)
    assert keys == sorted(keys, key=lambda k: shuffle_order(k, seed=0))
    assert keys != sorted(keys)  # shuffled, not sorted by key


def test_image_and_caption_bytes_are_copied_as_they_are(top30, source):
    before, after = tar_samples(source), tar_samples(top30)
    assert len(after) == 12
    for key, members in after.items():
        assert members["png"] == before[key]["png"] and members["txt"] == before[key]["txt"]
        meta = json.loads(members["json"])
        assert meta["key"] == key and meta["clip_score"] is not None  # select's new score


def test_threshold_and_where_rules_keep_exactly_the_expected_keys(top30, tmp_path):
    rows = shard_rows(top30)
    scores = sorted(r["clip_score"] for r in rows)
    t = scores[len(scores) // 2]
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stages": ["clip_score"], "clip_score": {"min_score": t}}))
    zero = "a photo of the digit zero"
    out = tmp_path / "out"
    args = ["--input", str(top30 / "manifest.json"), "--output", str(out), "--recipe", str(recipe)]
    assert select(args + ["--where", f"caption != {zero}", "--samples-per-shard", "4"]) == 0

    zeros = {r["key"] for r in rows if r["caption"] == zero}
    expected = {r["key"] for r in rows if r["clip_score"] >= t} - zeros
    assert {r["key"] for r in shard_rows(out)} == expected
    reasons = {r["key"]: r["reason"] for r in reject_rows(out)}
    assert reasons == {
        **{k: "low_clip_score" for k in {r["key"] for r in rows} - expected - zeros},
        **dict.fromkeys(zeros, "rule_caption"),
    }
    manifest = Manifest.from_json((out / "manifest.json").read_text())
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()
    assert manifest.total_samples == stats.written == len(expected)
    assert stats.input == len(rows) == stats.written + sum(stats.filtered.values())
    assert (
        manifest.source == str(top30)
        and manifest.scorer == Manifest.from_json((top30 / "manifest.json").read_text()).scorer
    )  # the recorded scores' model carries over


def test_where_rules_compare_numbers_as_numbers_and_lists_by_member():
    row = {"width": 512, "language": "de", "clip_score": 0.25, "caption": None}
    assert rule_holds(row, parse_rule("width>=256")) and not rule_holds(
        row, parse_rule("width<100")
    )
    assert rule_holds(row, parse_rule("language in en, de"))
    assert not rule_holds(row, parse_rule("language not in de,fr"))
    assert rule_holds(row, parse_rule("clip_score > 0.2"))
    assert not rule_holds(row, parse_rule("caption != x"))  # a missing value fails every rule


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recipe", "datacomp_clip_top30"], "records no clip_score: pass --score-checkpoint"),
        (["--where", "clip_score>=0.2"], "records no clip_score: pass --score-checkpoint"),
        (["--where", "widht>=3"], "'widht' is not a recorded column"),
        (["--where", "width>=big"], "'big' is not a number"),
        (["--where", "width"], "is not COLUMN OP VALUE"),
        (["--threads", "8"], "--threads: not a select option"),
    ],
)
def test_mistakes_are_one_error_line_before_any_work(source, tmp_path, capsys, extra, message):
    code = select(["--input", str(source), "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_an_input_that_is_not_a_webpairs_output_is_refused(tmp_path, capsys):
    assert select(["--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "is not a webpairs output" in capsys.readouterr().err


def test_a_language_filter_reads_the_recorded_captions_and_may_keep_nothing(source, tmp_path):
    recipe = tmp_path / "german.json"
    recipe.write_text(
        json.dumps(
            {
                "stages": ["filters"],
                "filters": {"languages": ["de"]},
                "captions": {"candidate_languages": ["en", "de"]},
            }
        )
    )
    out = tmp_path / "out"
    assert select(["--input", str(source), "--output", str(out), "--recipe", str(recipe)]) == 0
    rejected = reject_rows(out)
    assert len(rejected) == 40 and {(r["reason"], r["language"]) for r in rejected} == {
        ("language", "en")
    }
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()
    assert stats.written == 0 and stats.filtered == {"language": 40}
    assert Manifest.from_json((out / "manifest.json").read_text()).shardlist == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--score-checkpoint", "nope.pt"], "nope.pt does not exist"),
        (["--score-checkpoint", "nope.pt", "--threads", "8"], "--threads: not a score option"),
        ([], "--score-checkpoint (a trainer checkpoint or run folder) is required"),
    ],
)
def test_score_mistakes_are_one_error_line_and_leave_the_output_alone(
    source, capsys, extra, message
):
    from pipeline.jobs.score import main as score

    before = {p: p.read_bytes() for p in [source / "manifest.json", *source.glob("shards/*")]}
    code = score(["--input", str(source), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert {p: p.read_bytes() for p in before} == before
