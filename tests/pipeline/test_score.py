"""ScorePairs (RunInference over a trainer checkpoint) and the clip_score stage, through real
curate jobs over real WebDataset tars of scikit-learn's digits.

The helpers at the top (a seeded tiny checkpoint saved by the trainer's own `save_checkpoint`,
digit tars written by `webdataset.ShardWriter`, a scored curate run) serve test_select.py and
test_semdedup.py too."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.jobs.curate import main as curate
from pipeline.scoring.clip_filter import (
    ClipScoreConfig,
    ClipScoreFilter,
    exact_threshold,
    threshold_window,
    top_fraction_threshold,
)
from schemas import Manifest, Stats

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tiny_checkpoint(run_dir: Path, seed: int = 0) -> Path:
    """A `smoke` CLIP (the preset for tests) with seeded random weights and the byte tokenizer,
    saved as the trainer saves its checkpoints (what `webpairs eval` and ScorePairs load).
    Not `tiny`: its convolutional stem's float results depend on the batch's size (oneDNN
    picks the algorithm), and these tests compare runners byte for byte."""
    from trainer.checkpoint import save_checkpoint
    from trainer.configs import get_model_config
    from trainer.model import CLIP
    from trainer.tokenizer import CaptionTokenizer, byte_tokenizer

    cfg = get_model_config("smoke")
    tokenizer = CaptionTokenizer(byte_tokenizer(), cfg.text.context_length)
    cfg.text.vocab_size = tokenizer.vocab_size
    cfg.text.eot_token_id, cfg.text.pad_token_id = tokenizer.eot_id, tokenizer.pad_id
    torch.manual_seed(seed)
    model = CLIP(cfg)
    state = {
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(cfg),
        "tokenizer": tokenizer.to_json(),
    }
    return save_checkpoint(run_dir, 0, state)


def digit_png(index: int, size: int = 32) -> bytes:
    pixels = load_digits().images[index]
    gray = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    gray.resize((size, size), Image.Resampling.BICUBIC).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def digit_tars(folder: Path, n: int, per_shard: int = 16, twins: int = 0) -> Path:
    """`n` digit samples (PNG, "a photo of the digit seven") in tars; the last `twins` repeat
    the first ones byte for byte under other keys. -> the folder."""
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(n):
            j = i if i < n - twins else i - (n - twins)
            sink.write(
                {
                    "__key__": f"digit{i:05d}",
                    "png": digit_png(j),
                    "txt": f"a photo of the digit {NAMES[int(digits.target[j])]}",
                }
            )
    return folder


def curate_scored(tars: Path, out: Path, checkpoint: Path, *extra: str) -> Path:
    """A curate run over `tars` that scores every pair (no other stage) -> its output."""
    args = [
        "--input",
        str(tars),
        "--input-format",
        "webdataset",
        "--output",
        str(out),
        "--recipe",
        "none",
        "--image-size",
        "32",
        "--encode-format",
        "png",
        "--score-checkpoint",
        str(checkpoint),
        "--samples-per-shard",
        "20",
        *extra,
    ]
    assert curate(args) == 0
    return out


def shard_rows(out: Path) -> list[dict]:
    tables = [pq.read_table(p) for p in sorted((out / "shards").glob("*.parquet"))]
    return pa.concat_tables(tables).to_pylist() if tables else []


def tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: member bytes} over every tar of an output."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Two cores, shared: the driver's (and in-process workers') torch keeps to one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def tars(tmp_path_factory) -> Path:
    return digit_tars(tmp_path_factory.mktemp("digits"), 46, twins=2)


@pytest.fixture(scope="module")
def scored(tars, checkpoint, tmp_path_factory) -> Path:
    return curate_scored(tars, tmp_path_factory.mktemp("scored") / "out", checkpoint)


def test_scores_equal_a_plain_pytorch_forward_on_the_same_images(scored, checkpoint):
    from trainer.checkpoint import load_model
    from trainer.transforms import decode_image, normalize, resize_center_crop

    rows = {r["key"]: r for r in shard_rows(scored)}
    samples = tar_samples(scored)
    assert set(rows) == set(samples) and len(rows) == 46
    keys = sorted(rows)
    model, tokenizer = load_model(str(checkpoint), torch.device("cpu"))
    pixels = torch.stack(
        [resize_center_crop(decode_image(samples[k]["png"], 32), 32) for k in keys]
    )
    with torch.no_grad():
        images = model.encode_image(normalize(pixels))  # (N, D)
        texts = model.encode_text(tokenizer([samples[k]["txt"].decode() for k in keys]))
    expected = (images * texts).sum(dim=-1).numpy()
    got = np.array([rows[k]["clip_score"] for k in keys], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    embeddings = np.array([rows[k]["image_embedding"] for k in keys], dtype=np.float32)
    assert embeddings.shape == (46, 64)
    np.testing.assert_allclose(embeddings, images.numpy(), atol=2e-3)  # stored as float16


def test_the_same_pair_scored_twice_gets_the_same_score(scored):
    rows = shard_rows(scored)
    by_source = {}
    for r in rows:  # the twins repeat digits 0 and 1 byte for byte (same caption too)
        by_source.setdefault((r["sha256"], r["caption"]), []).append(r["clip_score"])
    twins = [scores for scores in by_source.values() if len(scores) == 2]
    assert len(twins) == 2
    assert all(a == b for a, b in twins)


def test_manifest_names_the_model_and_parquet_holds_float16_embeddings(scored, checkpoint):
    manifest = Manifest.from_json((scored / "manifest.json").read_text())
    assert manifest.version == 2
    assert manifest.scorer["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert manifest.scorer["model"] == "smoke" and manifest.scorer["embed_dim"] == 64
    schema = pq.read_schema(next((scored / "shards").glob("*.parquet")))
    assert schema.field("image_embedding").type == pa.list_(pa.float16())
    assert schema.field("clip_score").type == pa.float32()
    meta = json.loads(next(iter(tar_samples(scored).values()))["json"])
    assert "clip_score" in meta and "image_embedding" not in meta  # embeddings: parquet only
    Stats.from_json((scored / "stats.json").read_text()).check()


def test_scoring_in_multi_processing_mode_gives_the_same_output(tars, checkpoint, scored, tmp_path):
    multi = curate_scored(
        tars,
        tmp_path / "multi",
        checkpoint,
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    )
    single = {r["key"]: r["clip_score"] for r in shard_rows(scored)}
    assert {r["key"]: r["clip_score"] for r in shard_rows(multi)} == pytest.approx(single, abs=1e-6)
    assert tar_samples(multi) == tar_samples(scored)


def test_the_model_loads_once_for_all_threads_and_bundles_in_batches_of_the_set_size(
    scored, checkpoint
):
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.io.reshard import ReadSource, open_source
    from pipeline.scoring.identity import identify_checkpoint
    from pipeline.scoring.pairs import ScoreConfig, ScorePairs

    source = open_source(str(scored))  # 46 pairs in 3 shards: several bundles
    options = PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    p = beam.Pipeline(options=options)
    _ = (
        p
        | ReadSource(source, images=True)
        | ScorePairs(ScoreConfig(batch_size=8), identify_checkpoint(str(checkpoint)))
    )
    result = p.run()
    result.wait_until_finish()
    # RunInference counts in the handler's namespace
    metrics = result.metrics().query(MetricsFilter().with_namespace("score"))
    dist = {d.key.metric.name: d.committed for d in metrics["distributions"]}
    counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
    assert dist["load_model_latency_milli_secs"].count == 1  # Beam's shared model handle
    assert dist["inference_request_batch_size"].max == 8
    assert counters["num_inferences"] == 46


def rescore(output: Path, checkpoint: Path, device: str, tmp: Path) -> dict[str, float]:
    """`webpairs score` over a copy of `output` with `score: {device: ...}` -> {key: score}."""
    import shutil

    from pipeline.jobs.score import main as score

    copy = tmp / "copy"
    shutil.copytree(output, copy)
    recipe = tmp / "score.json"
    recipe.write_text(json.dumps({"score": {"device": device, "batch_size": 16}}))
    args = ["--input", str(copy), "--score-checkpoint", str(checkpoint), "--recipe", str(recipe)]
    assert score(args) == 0
    return {r["key"]: r["clip_score"] for r in shard_rows(copy)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scores_on_the_gpu_equal_the_cpu_scores(scored, checkpoint, tmp_path):
    recorded = {r["key"]: r["clip_score"] for r in shard_rows(scored)}
    assert rescore(scored, checkpoint, "cuda", tmp_path) == pytest.approx(recorded, abs=1e-3)


def _run_curate(tars: Path, out: Path, checkpoint: str, capsys) -> tuple[int, list[str]]:
    code = curate(
        ["--input", str(tars), "--input-format", "webdataset", "--output", str(out)]
        + ["--recipe", "datacomp_clip_top30", "--score-checkpoint", checkpoint]
    )
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_missing_checkpoint_is_one_error_line_before_any_work(tars, tmp_path, capsys):
    code, err = _run_curate(tars, tmp_path / "out", str(tmp_path / "nope.pt"), capsys)
    assert code == 2 and len(err) == 1 and "nope.pt does not exist" in err[0]
    assert not (tmp_path / "out").exists()


def test_an_incompatible_checkpoint_is_one_error_line(tars, checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    state["model_config"]["embed_dim"] = 32  # the weights are 64 wide
    torch.save(state, tmp_path / "wrong.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    for name in ("wrong.pt", "garbage.pt"):
        code, err = _run_curate(tars, tmp_path / "out", str(tmp_path / name), capsys)
        assert code == 2 and len(err) == 1, err
        assert f"{name} is not a usable webpairs CLIP checkpoint" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_score_stage_without_a_model_is_refused(tars, tmp_path, capsys):
    code = curate(
        ["--input", str(tars), "--input-format", "webdataset", "--output", str(tmp_path / "o")]
        + ["--recipe", "datacomp_clip_top30"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "names no scoring model" in err[0]


# --- the clip_score stage on inline light rows ------------------------------------------------


def test_top_fraction_threshold_reads_the_right_quantile():
    deciles = [0.1 * i for i in range(11)]  # 11 N-tiles of a million scores
    assert top_fraction_threshold(deciles, 1_000_000, 0.3) == pytest.approx(0.7)
    assert top_fraction_threshold(deciles, 1_000_000, 1.0) == 0.0
    assert top_fraction_threshold([], 0, 0.3) is None


def test_top_fraction_and_min_score_keep_the_best_pairs_and_count_the_rest():
    rows = [{"key": f"k{i}", "clip_score": i / 10} for i in range(10)]
    rows.append({"key": "none", "clip_score": None})
    removed = [(f"k{i}", "low_clip_score") for i in range(7)] + [("none", "unscored")]
    configs = {"top30": ClipScoreConfig(top_fraction=0.3), "min07": ClipScoreConfig(min_score=0.7)}
    with test_pipeline.TestPipeline() as p:
        light = p | beam.Create(rows)
        for name, cfg in configs.items():
            out = light | f"Filter-{name}" >> ClipScoreFilter(cfg)
            kept = out["kept"] | f"Kept-{name}" >> beam.Map(lambda r: r["key"])
            assert_that(kept, equal_to(["k9", "k8", "k7"]), label=f"kept-{name}")
            reasons = out["removed"] | f"Reasons-{name}" >> beam.Map(
                lambda d: (d["key"], d["reason"])
            )
            assert_that(reasons, equal_to(removed), label=f"removed-{name}")


def test_the_window_makes_an_approximate_quantile_exact():
    scores = np.sort(np.random.default_rng(0).random(1_000_000))
    error = 1e-3  # N-tiles off by up to error * N ranks, as the combiner may be
    ranks = np.arange(10_001) * len(scores) // 10_000 + (np.arange(10_001) % 3 - 1) * 900
    ntiles = scores[np.clip(ranks, 0, len(scores) - 1)].tolist()
    lo, hi = threshold_window(ntiles, len(scores), 0.3, error)
    above, inside = scores[scores > hi], scores[(scores >= lo) & (scores <= hi)]
    t = exact_threshold(ntiles, len(scores), 0.3, len(above), inside.tolist())
    assert (scores >= t).sum() == 300_000 and len(inside) < 10_000


def test_manifests_written_before_the_scorer_field_are_still_read():
    v1 = json.loads(Manifest(shardlist=[]).to_json())
    v1["version"] = 1
    del v1["scorer"]
    manifest = Manifest.from_dict(v1)
    assert manifest.scorer is None and manifest.version == 2
