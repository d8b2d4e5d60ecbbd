"""Model-based scoring: a trainer checkpoint's CLIP score and embeddings for every pair, with
Beam's RunInference, and the `clip_score` filter over the recorded scores.

    scorer = identify_checkpoint("runs/tiny")         # driver: resolve, hash, load once
    rows = rows | "ScorePairs" >> ScorePairs(ScoreConfig("runs/tiny", batch_size=64), scorer)
    # each row gains clip_score (cosine of the normalized image and caption embeddings) and,
    # unless embeddings=False, image_embedding / text_embedding (float16, normalized)

In a recipe:

    score: {checkpoint: runs/tiny, batch_size: 64}
    stages: [filters, clip_score]
    clip_score: {top_fraction: 0.3}        # or min_score: 0.3 (see below about the scale)

ScorePairs runs on full rows (image bytes in `_image`), after decoding and caption clean-up and
before the curation stages, so every stage sees the scores. The model is loaded lazily on the
workers by `pipeline.clip_handler.ClipModelHandler`, which imports the trainer (and torch);
this module imports neither, so curating without a model never pays for them.

Scores are on the scale of the model that made them. DataComp's 0.3 threshold is for OpenAI's
ViT-B/32; a small model trained for a few thousand steps puts most pairs between -0.1 and 0.4,
so prefer `top_fraction` (a global quantile, computed by Beam) until you know your model's scale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from pipeline.read import InputError
from pipeline.results import decision
from schemas import Reason, Status

SCORE_COLUMN = "clip_score"
_QUANTILES = 10_001  # resolution of the top_fraction threshold: 0.01 % of the scores


@dataclass(frozen=True)
class ScoreConfig:
    # trainer checkpoint file or run folder (its latest); a gs:// or s3:// file where the
    # workers cannot read the driver's disk (Dataflow)
    checkpoint: str | None = None
    batch_size: int = 64  # pairs per forward pass (BatchElements' fixed size)
    device: str = "auto"  # "auto" (cuda when the worker has one), "cpu", "cuda"
    embeddings: bool = True  # keep the embeddings beside the score (needed by semantic_dedupe)
    large_model: bool = False  # one model per machine, shared by its worker processes
    threads: int = 0  # torch threads per worker process; 0: torch's default (1 is best where
    # a runner keeps one worker process per core, or cores are shared: bench/RESULTS-score.md)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"score batch_size must be at least 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"score device must be auto, cpu or cuda, not {self.device!r}")


@dataclass(frozen=True)
class ScorerIdentity:
    """Which model scored a dataset; recorded as the manifest's `scorer`."""

    checkpoint: str  # the checkpoint file (or .dcp folder) the workers load
    sha256: str  # of its bytes (for a .dcp folder: of every file, by relative name)
    model: str  # the trainer's model preset name
    embed_dim: int
    image_size: int  # the model's input side: images are center-cropped and resized to it
    context_length: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def is_remote(path: str) -> bool:
    return "://" in path


def checkpoint_sha256(path: str) -> str:
    """sha256 of a checkpoint file (any Beam filesystem), or of a local .dcp folder's files."""
    sha = hashlib.sha256()
    if not is_remote(path) and os.path.isdir(path):
        for root, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                full = os.path.join(root, name)
                sha.update(os.path.relpath(full, path).encode() + b"\0")
                sha.update(checkpoint_sha256(full).encode())
        return sha.hexdigest()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


@contextlib.contextmanager
def local_checkpoint(path: str) -> Iterator[str]:
    """A local path to the checkpoint: itself, or a temporary copy of a gs:// / s3:// file
    (the trainer reads local files), removed afterwards."""
    if not is_remote(path):
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="webpairs-ckpt-")
    try:
        local = os.path.join(tmp, posixpath.basename(path.rstrip("/")) or "checkpoint.pt")
        with (
            FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as src,
            open(local, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_checkpoint_path(spec: str) -> str:
    """A run folder -> its latest checkpoint; local paths made absolute (workers read them)."""
    if is_remote(spec):
        if not FileSystems.exists(spec):
            raise InputError(f"score checkpoint {spec} does not exist")
        return spec
    from trainer.checkpoint import resolve_checkpoint  # lazily: imports torch

    try:
        return str(resolve_checkpoint(spec).resolve())
    except Exception as e:  # the trainer's CheckpointError: missing file, empty run folder
        raise InputError(f"score checkpoint: {e}") from None


def identify_checkpoint(spec: str) -> ScorerIdentity:
    """Driver side, before any work starts: resolve, hash and load the checkpoint once, so a
    missing or incompatible one is one clear line instead of a failure on every worker."""
    path = resolve_checkpoint_path(spec)
    from pipeline.clip_handler import load_scoring_model  # lazily: imports the trainer

    try:
        with local_checkpoint(path) as local:
            model, _ = load_scoring_model(local, "cpu")
            sha256 = checkpoint_sha256(local)
    except Exception as e:  # not a checkpoint, not ours, or weights that do not fit the config
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"score checkpoint {spec} is not a usable webpairs CLIP checkpoint: {detail}"
        ) from None
    cfg = model.cfg
    return ScorerIdentity(
        checkpoint=path,
        sha256=sha256,
        model=cfg.name,
        embed_dim=cfg.embed_dim,
        image_size=cfg.vision.image_size,
        context_length=cfg.text.context_length,
    )


class _AttachScoresFn(beam.DoFn):
    """PredictionResult(row, (score, image embedding, text embedding) | None) -> scored row."""

    def __init__(self, embeddings: bool):
        self.embeddings = embeddings
        self.scored = Metrics.counter("score", "scored")
        self.unscored = Metrics.counter("score", "undecodable")

    def process(self, result):
        row, inference = result.example, result.inference
        out = {k: v for k, v in row.items()}
        if inference is None:
            self.unscored.inc()
            out[SCORE_COLUMN] = None
        else:
            self.scored.inc()
            score, image_embedding, text_embedding = inference
            out[SCORE_COLUMN] = score
            if self.embeddings:
                out["image_embedding"], out["text_embedding"] = image_embedding, text_embedding
        yield out


class ScorePairs(beam.PTransform):
    """Rows with `_image` -> the same rows with `clip_score` (None when the model cannot decode
    the image, counted as score/undecodable) and, if configured, the two embeddings.

    Model sharing: by default RunInference keeps one model per worker *process*, shared by all
    the threads, bundles and DoFn instances of that process through Beam's `shared.Shared`
    handle (tests/pipeline/test_score.py counts one load). That is right for the models this project trains (tens to hundreds of MB): each
    process runs its own forward passes, so CPU workers use all their cores. `large_model: true`
    sets `share_model_across_processes()`: one copy per machine, served to the processes by
    `multi_process_shared` (batches are pickled to it) -- for a GPU worker whose memory holds
    one copy only; its tag is derived from the checkpoint's sha256, so two ScorePairs of the
    same checkpoint then share that copy.
    """

    def __init__(self, cfg: ScoreConfig, scorer: ScorerIdentity):
        super().__init__()
        self.cfg, self.scorer = cfg, scorer

    def expand(self, rows):
        # Imported here: Beam's inference module imports torch, and only scoring jobs need it.
        from apache_beam.ml.inference.base import RunInference

        from pipeline.clip_handler import ClipModelHandler

        handler = ClipModelHandler(self.cfg, self.scorer)
        return (
            rows
            | "RunInference"
            >> RunInference(handler, model_identifier=f"webpairs-clip-{self.scorer.sha256[:16]}")
            | "AttachScores" >> beam.ParDo(_AttachScoresFn(self.cfg.embeddings))
        )


# ---------------------------------------------------------------------------------------------
# The clip_score stage: light rows (scores recorded, no bytes) -> {"kept", "removed"}.


@dataclass(frozen=True)
class ClipScoreConfig:
    min_score: float | None = None  # keep pairs scoring at least this (the model's scale!)
    top_fraction: float | None = None  # keep this share of the best-scored pairs (0.3: top 30 %)
    quantile_error: float = 1e-3  # rank error of the approximate first pass, as a share of N;
    # the exact second pass ranks about 4x this share of the scores in one worker

    def __post_init__(self):
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise ValueError(f"clip_score top_fraction must be in (0, 1], got {self.top_fraction}")
        if not 0 < self.quantile_error < 1:
            raise ValueError("clip_score quantile_error must be in (0, 1)")


def _keep_count(count: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * count))


def _ntile(quantiles: list[float], count: int, rank: int) -> float:
    """The N-tile of Beam's ApproximateQuantiles nearest to `rank` (from the bottom, 0-based):
    N-tile j stands for the score at rank ceil(j * count / (N - 1)) - 1."""
    m = len(quantiles) - 1
    return quantiles[min(m, max(0, (rank + 1) * m // count))]


def top_fraction_threshold(quantiles: list[float], count: int, fraction: float) -> float | None:
    """The lowest kept score of the top `fraction` of `count` scores, read from the N-tiles:
    exact while count < N, within the combiner's rank error above. None: no score."""
    if not quantiles or count == 0:
        return None
    return _ntile(quantiles, count, count - _keep_count(count, fraction))


def threshold_window(
    quantiles: list[float], count: int, fraction: float, error: float
) -> tuple[float, float] | None:
    """Scores between which the exact threshold must lie, given the N-tiles' rank error."""
    if not quantiles or count == 0:
        return None
    slack = math.ceil(2 * (error + 1 / (len(quantiles) - 1)) * count) + 1
    rank = count - _keep_count(count, fraction)
    return _ntile(quantiles, count, rank - slack), _ntile(quantiles, count, rank + slack)


def exact_threshold(
    quantiles: list[float],
    count: int,
    fraction: float,
    above: int,
    inside: list[float],
) -> float | None:
    """The exact lowest kept score: `above` scores lie over the window, `inside` are the
    scores in it. Falls back to the N-tile if the window missed (a broken error bound)."""
    need = _keep_count(count, fraction) - above if count else 0
    if 0 < need <= len(inside):
        return sorted(inside, reverse=True)[need - 1]
    return top_fraction_threshold(quantiles, count, fraction)


def keep_by_score(
    row: dict, cfg: ClipScoreConfig, threshold: float | None = None
) -> tuple[bool, str | None, str | None]:
    """-> (keep, reason, detail) for one light row; `threshold` is the top_fraction cut."""
    score = row.get(SCORE_COLUMN)
    if score is None:
        return False, Reason.UNSCORED, "no clip_score (the model could not read the image)"
    if cfg.min_score is not None and score < cfg.min_score:
        return False, Reason.LOW_CLIP_SCORE, f"clip_score {score:.4f} < {cfg.min_score}"
    if threshold is not None and score < threshold:
        return (
            False,
            Reason.LOW_CLIP_SCORE,
            f"clip_score {score:.4f} below the top {cfg.top_fraction:.2%} ({threshold:.4f})",
        )
    return True, None, None


class _ClipScoreFn(beam.DoFn):
    def __init__(self, cfg: ClipScoreConfig):
        self.cfg = cfg

    def process(self, row, threshold=None):
        ok, reason, detail = keep_by_score(row, self.cfg, threshold)
        if ok:
            yield row
        else:
            Metrics.counter("clip_score", reason).inc()
            yield beam.pvalue.TaggedOutput(
                "removed", decision(row["key"], Status.FILTERED, reason, error=detail)
            )


class ClipScoreFilter(beam.PTransform):
    """Light rows -> {"kept", "removed"} by `clip_score`: an absolute minimum and/or the top
    fraction -- exactly ceil(fraction * N) pairs, plus ties at the cut. The cut is a global
    quantile: Beam's ApproximateQuantiles (bounded memory, rank error under quantile_error *
    N) narrows it to a window of about 4 * quantile_error * N scores, which are then ranked."""

    def __init__(self, cfg: ClipScoreConfig = ClipScoreConfig()):
        super().__init__()
        self.cfg = cfg

    def expand(self, light):
        cfg = self.cfg
        side = {}
        if cfg.top_fraction is not None:
            scores = (
                light
                | "Scores" >> beam.Map(lambda r: r.get(SCORE_COLUMN))
                | "Scored" >> beam.Filter(lambda s: s is not None)
            )
            quantiles = scores | "Quantiles" >> beam.CombineGlobally(
                ApproximateQuantilesCombineFn.create(
                    num_quantiles=_QUANTILES, epsilon=cfg.quantile_error
                )
            )
            count = beam.pvalue.AsSingleton(
                scores | "CountScores" >> beam.combiners.Count.Globally()
            )
            window = beam.pvalue.AsSingleton(
                quantiles
                | "Window"
                >> beam.Map(
                    threshold_window,
                    count=count,
                    fraction=cfg.top_fraction,
                    error=cfg.quantile_error,
                )
            )
            # A second, cheap pass makes the cut exact (and the same on every runner): the
            # scores over the window are counted, the few inside it sorted.
            above = scores | "Above" >> beam.Filter(lambda s, w: w and s > w[1], w=window)
            inside = scores | "Inside" >> beam.Filter(
                lambda s, w: w and w[0] <= s <= w[1], w=window
            )
            threshold = quantiles | "Threshold" >> beam.Map(
                exact_threshold,
                count=count,
                fraction=cfg.top_fraction,
                above=beam.pvalue.AsSingleton(
                    above | "CountAbove" >> beam.combiners.Count.Globally()
                ),
                inside=beam.pvalue.AsSingleton(inside | "InWindow" >> beam.combiners.ToList()),
            )
            side["threshold"] = beam.pvalue.AsSingleton(threshold)
        out = light | "Keep" >> beam.ParDo(_ClipScoreFn(cfg), **side).with_outputs(
            "removed", main="kept"
        )
        return {"kept": out.kept, "removed": out.removed}


def check_scoring(
    score: ScoreConfig, stages: tuple[str, ...], source_scored: bool = False
) -> ScorerIdentity | None:
    """The scorer a run uses (None: it does not score), or one clear error when a stage needs
    scores that neither a checkpoint nor the source provides."""
    needs = [s for s in stages if s in ("clip_score", "semantic_dedupe")]
    if score.checkpoint:
        if "semantic_dedupe" in stages and not score.embeddings:
            raise InputError("semantic_dedupe needs the embeddings: drop score.embeddings: false")
        return identify_checkpoint(score.checkpoint)
    if needs and not source_scored:
        raise InputError(
            f"the recipe runs {', '.join(needs)} but names no scoring model "
            "(recipe section score: {checkpoint: ...}, or --score-checkpoint PATH)"
        )
    return None
