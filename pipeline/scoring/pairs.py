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

With an OpenCLIP model (OpenAI's or OpenCLIP's weights, trainer/openclip_models.py):

    webpairs curate ... --recipe datacomp_clip_0.3 --score-model ViT-B-32-quickgelu \
        --score-pretrained ViT-B-32.pt          # recipe: score: {model: ViT-B-32, checkpoint: ...}

ScorePairs runs on full rows (image bytes in `_image`), after decoding and caption clean-up and
before the curation stages, so every stage sees the scores. The model is loaded lazily on the
workers by `pipeline.scoring.handler.ClipModelHandler`, which imports the trainer (and torch);
this module imports neither, so curating without a model never pays for them.

Scores are on the scale of the model that made them. DataComp's 0.3 threshold is for OpenAI's
ViT-B/32 (scored with --score-model ViT-B-32-quickgelu and OpenAI's weights, it means what it
means there: the cosine of the normalized embeddings, CLIP's preprocessing); a small model trained for a few thousand steps puts most pairs between -0.1 and 0.4,
so prefer `top_fraction` (a global quantile, computed by Beam) until you know your model's scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.io.url_lists import InputError
from pipeline.scoring.identity import ScorerIdentity, identify_checkpoint

SCORE_COLUMN = "clip_score"


@dataclass(frozen=True)
class ScoreConfig:
    # trainer checkpoint file or run folder (its latest); a gs:// or s3:// file where the
    # workers cannot read the driver's disk (Dataflow); with `model`: OpenCLIP / OpenAI weights
    checkpoint: str | None = None
    # an OpenCLIP architecture (ViT-B-32, ViT-L-14, RN50, ...-quickgelu) or config .json that
    # `checkpoint` holds the weights of (--score-model / --score-pretrained); None: ours
    model: str | None = None
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

        from pipeline.scoring.handler import ClipModelHandler

        handler = ClipModelHandler(self.cfg, self.scorer)
        return (
            rows
            | "RunInference"
            >> RunInference(handler, model_identifier=f"webpairs-clip-{self.scorer.sha256[:16]}")
            | "AttachScores" >> beam.ParDo(_AttachScoresFn(self.cfg.embeddings))
        )


def check_scoring(
    score: ScoreConfig, stages: tuple[str, ...], source_scored: bool = False
) -> ScorerIdentity | None:
    """The scorer a run uses (None: it does not score), or one clear error when a stage needs
    scores that neither a checkpoint nor the source provides."""
    needs = [s for s in stages if s in ("clip_score", "semantic_dedupe")]
    if score.model and not score.checkpoint:
        raise InputError(f"--score-model {score.model} needs its weights: --score-pretrained PATH")
    if score.checkpoint:
        if "semantic_dedupe" in stages and not score.embeddings:
            raise InputError("semantic_dedupe needs the embeddings: drop score.embeddings: false")
        return identify_checkpoint(score.checkpoint, score.model)
    if needs and not source_scored:
        raise InputError(
            f"the recipe runs {', '.join(needs)} but names no scoring model "
            "(recipe section score: {checkpoint: ...}, or --score-checkpoint PATH)"
        )
    return None
