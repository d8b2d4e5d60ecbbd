"""Semantic dedupe: planted near-identical pairs among distinct ones, first on inline embeddings,
then on real photos scored by a checkpoint, through curate and `webpairs select`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import webdataset as wds
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.curation.dedupe.semantic import (
    SemanticDedupe,
    SemDedupConfig,
    spherical_kmeans,
    unit_rows,
)
from pipeline.jobs.select import main as select
from schemas import Stats
from tests.pipeline.test_score import curate_scored, shard_rows, tiny_checkpoint
from tests.pipeline.test_score import one_torch_thread as one_torch_thread  # noqa: F401
from tests.pipeline.test_select import reject_rows


def test_kmeans_finds_well_separated_groups():
    rng = np.random.default_rng(1)
    centers = unit_rows(rng.normal(size=(3, 8)))
    x = unit_rows(np.repeat(centers, 20, axis=0) + 0.05 * rng.normal(size=(60, 8)))
    c = spherical_kmeans(x, 3, iterations=10, seed=0)
    labels = (x @ c.T).argmax(axis=1)
    assert len({tuple(labels[i : i + 20]) for i in range(0, 60, 20)}) == 3  # one label a group
    assert all(len(set(labels[i : i + 20])) == 1 for i in range(0, 60, 20))


def test_planted_near_copies_lose_to_the_better_scored_original():
    rng = np.random.default_rng(0)
    base = unit_rows(rng.normal(size=(40, 32)))  # random directions: cosines near 0
    rows = [
        {"key": f"o{i:02d}", "clip_score": 0.3, "image_embedding": base[i].astype(np.float16)}
        for i in range(40)
    ]
    for i in range(5):  # two near copies of each of five originals, with worse captions
        for c in range(2):
            emb = unit_rows(base[i] + 0.02 * rng.normal(size=32)[None])[0]
            rows.append(
                {"key": f"c{i}{c}", "clip_score": 0.1, "image_embedding": emb.astype(np.float16)}
            )
    rows.append({"key": "none", "clip_score": None, "image_embedding": None})  # kept as is
    cfg = SemDedupConfig(threshold=0.95, clusters=4)
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(rows) | SemanticDedupe(cfg)
        assert_that(
            out["removed"] | beam.Map(lambda d: (d["key"], d["reason"], d["duplicate_of"])),
            equal_to(
                [(f"c{i}{c}", "semantic_duplicate", f"o{i:02d}") for i in range(5) for c in (0, 1)]
            ),
            label="removed",
        )
        assert_that(
            out["kept"] | "KeptKeys" >> beam.Map(lambda r: r["key"]),
            equal_to([f"o{i:02d}" for i in range(40)] + ["none"]),
            label="kept",
        )


# --- real photos, a real checkpoint -----------------------------------------------------------

PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "moon", "page", "text",
    "coins", "brick", "gravel", "grass", "logo", "motorcycle_left",
)  # fmt: skip
TWINS = ("chelsea", "rocket", "coins")  # the same bytes again, under another caption
REENCODED = ("astronaut", "camera")  # re-encoded at JPEG quality 90


def _photo(name: str) -> Image.Image:
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    with Image.open(next(folder.glob(f"{name}.*"))) as im:
        im = im.convert("RGB")
    scale = 64 / min(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo_output(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A scored output of distinct photos plus planted semantic duplicates (caption -> photo)."""
    tmp = tmp_path_factory.mktemp("photos")
    group = {}
    (tmp / "tars").mkdir()
    with wds.ShardWriter(str(tmp / "tars" / "%05d.tar"), maxcount=100, verbose=0) as sink:
        for i, name in enumerate(PHOTOS):
            im = _photo(name)
            samples = [(f"a photo: {name}", _jpeg(im, 95))]
            if name in TWINS:
                samples.append((f"another view of {name}", _jpeg(im, 95)))
            if name in REENCODED:
                samples.append((f"{name}, re-encoded", _jpeg(im, 90)))
            for j, (caption, data) in enumerate(samples):
                sink.write({"__key__": f"p{i:02d}-{j}", "jpg": data, "txt": caption})
                group[caption] = name
    checkpoint = tiny_checkpoint(tmp / "run")
    out = curate_scored(tmp / "tars", tmp / "scored", checkpoint, "--image-size", "64")
    return out, group


def test_select_removes_the_planted_semantic_duplicates(photo_output, tmp_path):
    source, group = photo_output
    recipe = tmp_path / "semdedup.json"
    recipe.write_text(
        json.dumps(
            {
                "stages": ["semantic_dedupe"],
                "semantic_dedupe": {"threshold": 0.98, "clusters": 3},
            }
        )
    )
    out = tmp_path / "out"
    assert select(["--input", str(source), "--output", str(out), "--recipe", str(recipe)]) == 0
    kept, removed = shard_rows(out), reject_rows(out)
    assert sorted(group[r["caption"]] for r in kept) == sorted(PHOTOS)  # one of each photo
    assert sorted(group[r["caption"]] for r in removed) == sorted(TWINS + REENCODED)
    by_key = {r["key"]: r for r in kept}
    for r in removed:
        assert r["reason"] == "semantic_duplicate" and r["status"] == "duplicate"
        assert group[by_key[r["duplicate_of"]]["caption"]] == group[r["caption"]]
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()
    assert stats.duplicate == {"semantic_duplicate": len(TWINS) + len(REENCODED)}
