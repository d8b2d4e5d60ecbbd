"""The bootstrapped curation recipe of docs/bootstrap.md at toy scale, with the real commands:
curate with cheap filters -> train a small model (the trainer, a few steps) -> record its
scores in the curated output (`webpairs score`) -> re-select by score (`webpairs select`) ->
train again on the selection."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import webdataset as wds

from pipeline.jobs.curate import main as curate
from pipeline.jobs.score import main as score
from pipeline.jobs.select import main as select
from schemas import Manifest, Stats
from tests.pipeline.test_score import NAMES, digit_png, shard_rows, tar_samples
from tests.pipeline.test_score import one_torch_thread as one_torch_thread  # noqa: F401
from tests.pipeline.test_select import reject_rows


def noisy_digits(folder: Path, n: int) -> Path:
    """`n` digit pairs, plus 4 one-word captions (a cheap filter's catch) and 3 byte-identical
    copies (an exact duplicate's), in tars of 32."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    folder.mkdir(parents=True)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=32, verbose=0) as sink:
        for i in range(n + 7):
            j = i if i < n + 4 else i - (n + 4)  # the last 3 repeat the first 3
            caption = f"a photo of the digit {NAMES[int(target[j])]}"
            if n <= i < n + 4:
                caption = NAMES[int(target[j])]
            sink.write({"__key__": f"d{i:04d}", "png": digit_png(j), "txt": caption})
    return folder


def train(data: Path, run: Path) -> Path:
    """`python -m trainer train`, as a user runs it: a small model, a few steps. -> checkpoint."""
    cmd = [sys.executable, "-m", "trainer", "train", "--data", str(data), "--output", str(run)]
    cmd += ["--model", "smoke", "--steps", "6", "--batch-size", "16", "--workers", "0"]
    cmd += ["--threads", "1", "--log-every", "3", "--seed", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (checkpoint,) = sorted((run / "checkpoints").glob("step-*.pt"))
    return checkpoint


def test_curate_train_score_reselect_train_again(tmp_path):
    # 1. curate with cheap filters
    recipe = tmp_path / "cheap.json"
    recipe.write_text(
        json.dumps({"stages": ["filters", "exact_dedupe"], "filters": {"min_words": 3}})
    )
    round0 = tmp_path / "round0"
    args = ["--input", str(noisy_digits(tmp_path / "web", 60)), "--input-format", "webdataset"]
    args += ["--output", str(round0), "--recipe", str(recipe), "--image-size", "32"]
    assert curate(args + ["--encode-format", "png", "--samples-per-shard", "32"]) == 0
    stats0 = Stats.from_json((round0 / "stats.json").read_text())
    assert stats0.written == 60 and stats0.filtered == {"too_few_words": 4}
    assert stats0.duplicate == {"duplicate_image": 3}

    # 2. train a small model on it
    checkpoint = train(round0 / "manifest.json", tmp_path / "run0")

    # 3. score the curated output with it: metadata only, the tars stay as they were
    tars_before = tar_samples(round0)
    manifest0 = Manifest.from_json((round0 / "manifest.json").read_text())
    assert score(["--input", str(round0), "--score-checkpoint", str(tmp_path / "run0")]) == 0
    scored = Manifest.from_json((round0 / "manifest.json").read_text())
    assert scored.scorer["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert scored.shardlist == manifest0.shardlist  # same tars, sizes and sha256
    for entry in scored.shardlist:
        data = (round0 / entry.url).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256
    assert tar_samples(round0) == tars_before
    rows = shard_rows(round0)
    assert len(rows) == 60 and all(r["clip_score"] is not None for r in rows)
    assert all(len(r["image_embedding"]) == 64 for r in rows)

    # 4. re-select by the recorded scores (no model, no image decoded)
    recipe1 = tmp_path / "bootstrap.json"
    recipe1.write_text(json.dumps({"stages": ["clip_score"], "clip_score": {"top_fraction": 0.5}}))
    round1 = tmp_path / "round1"
    args = ["--input", str(round0), "--output", str(round1), "--recipe", str(recipe1)]
    assert select(args + ["--samples-per-shard", "16"]) == 0
    ranked = sorted(rows, key=lambda r: r["clip_score"], reverse=True)
    kept = {r["key"] for r in shard_rows(round1)}
    assert len(kept) == math.ceil(0.5 * 60) == 30
    assert kept == {r["key"] for r in ranked if r["clip_score"] >= ranked[29]["clip_score"]}
    assert {r["reason"] for r in reject_rows(round1)} == {"low_clip_score"}
    manifest1 = Manifest.from_json((round1 / "manifest.json").read_text())
    assert manifest1.source == str(round0) and manifest1.scorer == scored.scorer
    assert [s.nsamples for s in manifest1.shardlist] == [15, 15]  # balanced
    Stats.from_json((round1 / "stats.json").read_text()).check()

    # 5. train again, on the selection
    train(round1 / "manifest.json", tmp_path / "run1")
