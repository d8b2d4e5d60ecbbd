"""`webpairs score --cross-fit K`: folds by key hash, one scorer trained per fold by the real
trainer (its own process, the `smoke` preset, a few steps), each pair scored only by the model
that never trained on it, and the manifest recording it all."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.jobs.curate import main as curate
from pipeline.jobs.score import main as score
from pipeline.scoring.handler import ClipScorer
from pipeline.scoring.identity import identify_checkpoint
from pipeline.scoring.pairs import ScoreConfig
from schemas import Manifest
from schemas.folds import fold_of, in_validation
from tests.pipeline.test_bootstrap import noisy_digits
from tests.pipeline.test_score import one_torch_thread as one_torch_thread  # noqa: F401
from tests.pipeline.test_score import shard_rows, tar_samples
from trainer.transforms import decode_image, resize_center_crop

TRAIN = ["--model", "smoke", "--steps", "3", "--batch-size", "8", "--workers", "0"]
TRAIN += ["--threads", "1", "--log-every", "1", "--debug-seen-keys"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """47 curated digit pairs (a webpairs output: manifest, tars, per-shard parquet)."""
    tmp = tmp_path_factory.mktemp("crossfit")
    out = tmp / "round0"
    args = ["--input", str(noisy_digits(tmp / "web", 40)), "--input-format", "webdataset"]
    args += ["--output", str(out), "--recipe", "none", "--image-size", "32"]
    assert curate(args + ["--encode-format", "png", "--samples-per-shard", "16"]) == 0
    return out


@pytest.fixture(scope="module")
def crossfitted(dataset) -> dict:
    """The dataset scored with --cross-fit 2; -> its manifest's scorer."""
    assert score(["--input", str(dataset), "--cross-fit", "2", "--", *TRAIN]) == 0
    return Manifest.from_json((dataset / "manifest.json").read_text()).scorer


def seen_keys(run: Path) -> set[str]:
    lines = (run / "seen-keys.rank0.txt").read_text().splitlines()
    return {line.split()[2] for line in lines}


def test_folds_are_disjoint_covering_stable_and_apart_from_validation():
    keys = [hashlib.sha256(str(i).encode()).hexdigest()[:24] for i in range(4000)]
    for k in (2, 3, 5):
        folds = [fold_of(key, k) for key in keys]
        assert set(folds) == set(range(k))  # covering, and nothing outside 0..K-1
        assert all(abs(folds.count(f) / len(keys) - 1 / k) < 0.04 for f in range(k))
        assert folds == [fold_of(key, k) for key in keys]  # no state, no seed
    # a hash of its own: validation pairs (10 %) fall in every fold, about evenly
    val = [fold_of(key, 2) for key in keys if in_validation(key, 0.1)]
    assert 0.4 < val.count(0) / len(val) < 0.6


def test_the_trainer_holds_out_the_excluded_fold_and_its_validation_pairs():
    from trainer.configs import DataConfig
    from trainer.validation import drop_held_out, held_out

    keys = [hashlib.sha256(str(i).encode()).hexdigest()[:24] for i in range(600)]
    cfg = DataConfig(val_fraction=0.1, exclude_fold=(1, 3))
    test = held_out(cfg)
    assert [test(k) for k in keys] == [fold_of(k, 3) == 1 or in_validation(k, 0.1) for k in keys]
    kept = [s["__key__"] for s in drop_held_out(({"__key__": k} for k in keys), cfg)]
    assert kept and all(fold_of(k, 3) != 1 and not in_validation(k, 0.1) for k in kept)
    assert held_out(DataConfig()) is None  # nothing held out: the stream passes as it is


def test_each_pair_is_scored_by_the_model_that_never_trained_on_it(dataset, crossfitted):
    rows = shard_rows(dataset)
    assert len(rows) == 47 and all(r["clip_score"] is not None for r in rows)
    by_fold = {f: {r["key"] for r in rows if fold_of(r["key"], 2) == f} for f in (0, 1)}
    assert by_fold[0] and by_fold[1]

    # the record: per fold, its model, the keys it scored and the keys it may have trained on
    assert crossfitted["cross_fit"]["folds"] == 2
    assert [f["fold"] for f in crossfitted["folds"]] == [0, 1]
    checkpoints = []
    for entry in crossfitted["folds"]:
        fold, run = entry["fold"], dataset / "cross-fit" / f"fold-{entry['fold']}-of-2"
        checkpoint = Path(entry["checkpoint"])
        assert checkpoint.parent == run / "checkpoints"
        assert entry["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        assert entry["scored_keys"] == len(by_fold[fold])
        assert entry["training_keys"] == 47 - len(by_fold[fold])
        config = json.loads((run / "config.json").read_text())
        assert config["data"]["exclude_fold"] == [fold, 2] and config["model"]["name"] == "smoke"
        # what the trainer read: only the other fold's pairs
        trained = seen_keys(run)
        assert trained and not trained & by_fold[fold] and trained <= by_fold[1 - fold]
        checkpoints.append(str(checkpoint))

    # re-scored by hand with each model: the recorded score is its own fold's model's
    samples = tar_samples(dataset)
    models = [ClipScorer(identify_checkpoint(c), ScoreConfig()) for c in checkpoints]
    keys = sorted(by_fold[0])[:3] + sorted(by_fold[1])[:3]
    pixels = torch.stack(
        [resize_center_crop(decode_image(samples[k]["png"], 32), 32) for k in keys]
    )
    recorded = {r["key"]: r["clip_score"] for r in rows}
    captions = [next(r["caption"] for r in rows if r["key"] == k) for k in keys]
    scores = [m.score(pixels, captions)[0] for m in models]  # per model: (6,)
    for i, key in enumerate(keys):
        own, other = fold_of(key, 2), 1 - fold_of(key, 2)
        assert recorded[key] == pytest.approx(float(scores[own][i]), abs=1e-5)
        assert abs(recorded[key] - float(scores[other][i])) > 1e-4
    assert not np.allclose(scores[0], scores[1])


def test_a_rerun_gives_the_same_folds(dataset, crossfitted):
    folds_before = (dataset / "cross-fit" / "folds.json").read_text()
    assert score(["--input", str(dataset), "--cross-fit", "2", "--", *TRAIN]) == 0
    again = Manifest.from_json((dataset / "manifest.json").read_text()).scorer
    assert (dataset / "cross-fit" / "folds.json").read_text() == folds_before
    for before, after in zip(crossfitted["folds"], again["folds"]):
        assert (before["scored_keys"], before["training_keys"]) == (
            after["scored_keys"],
            after["training_keys"],
        )
        run = Path(after["checkpoint"]).parent.parent
        fold_keys = {r["key"] for r in shard_rows(dataset) if fold_of(r["key"], 2) == after["fold"]}
        assert not seen_keys(run) & fold_keys


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cross-fit", "0"], "--cross-fit 0: needs at least 2 folds"),
        (["--cross-fit", "1"], "--cross-fit 1: needs at least 2 folds"),
        (["--cross-fit", "48"], "--cross-fit 48: more folds than the 47 pairs"),
        (["--cross-fit", "2", "--score-checkpoint", "x"], "drop --score-checkpoint"),
        (["--cross-fit", "2", "--", "--stepz", "3"], "not a trainer flag (after --): --stepz"),
        (["--cross-fit", "2", "--", "--output", "r"], "--output after --: --cross-fit sets it"),
        (["--score-checkpoint", "x", "--", "--steps", "3"], "need --cross-fit K"),
    ],
)
def test_wrong_cross_fit_is_one_line(dataset, capsys, flags, message):
    assert score(["--input", str(dataset), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_documented_score_commands_are_accepted():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.jobs.shell import check_flags
    from pipeline.scoring.crossfit import check_train_args, split_train_args
    from tests.test_docs import documented

    commands = documented(r"webpairs score\b")
    assert any("--cross-fit" in argv for _, argv in commands)
    for _, argv in commands:
        job, train = split_train_args(argv)
        check_flags(job, PipelineOptions(job))  # unknown flags raise InputError
        if train:
            check_train_args(train)  # raises InputError, naming the flag
