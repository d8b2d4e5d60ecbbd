"""Cross-fitted scoring (`webpairs score --cross-fit K`): K scorers, each trained on all folds of
the dataset but one, and every pair scored only by the model that never trained on it, so that a
CLIP-score selection from scratch is not fooled by the wrong captions a scorer memorised.

    webpairs score --input round0/ --cross-fit 2 -- --model tiny --steps 600 --batch-size 128

  round0/ rows ──► SaveFoldCounts (RUNS/folds.json; driver: an empty fold is an error)
     ──► K × `python -m trainer train --data round0/manifest.json --exclude-fold I/K [flags after --]`
           into RUNS/fold-I-of-K/ (RUNS: --cross-fit-runs, default round0/cross-fit/)
     ──► ScoreFolds: each row to its fold's ScorePairs (the model of fold I scores fold I only)
     ──► the per-shard parquet rewritten as by `webpairs score`; the manifest's `scorer` names
         every fold's checkpoint and sha256 with its fold id and training-key count

Folds: `schemas.folds.fold_of(key, K)`, a 64-bit blake2b of the sample key (personalised
"webpairs-fold", independent of `--val-fraction`'s hash) times K, shifted by 64: the same fold on
every run, worker and runner, disjoint and covering. Scheme: K-fold cross-fitting, model I trains
on the K - 1 other folds (at K = 2, each model on one half and scoring the other, the split of
docs/bootstrap.md).

This module imports neither the trainer nor torch at import time; the trainer runs in its own
process per fold (its loader forks, which must not happen in a process running Beam's threads),
and its flags are checked in this one first, so a typo fails before any work.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.io.layout import join_path
from pipeline.io.reshard import Source
from pipeline.io.url_lists import InputError
from pipeline.scoring.identity import ScorerIdentity, identify_checkpoint, is_remote
from pipeline.scoring.pairs import ScoreConfig, ScorePairs
from schemas.folds import FOLD_RULE, fold_of, in_validation

logger = logging.getLogger(__name__)

RUNS_DIR = "cross-fit"  # default home of the fold runs, inside the scored dataset
FOLDS_NAME = "folds.json"  # in RUNS: rows per fold, from the metadata
# trainer flags the cross-fit sets itself
_OWN_TRAIN_FLAGS = ("--data", "--output", "--resume", "--exclude-fold")


@dataclass(frozen=True)
class CrossFit:
    folds: int  # K
    runs: str  # RUNS: the fold runs go to RUNS/fold-I-of-K
    train_args: tuple[str, ...] = ()  # the trainer's flags (model, steps, batch size, ...)
    val_fraction: float = 0.0  # the trainer's --val-fraction, read from train_args

    def run_dir(self, fold: int) -> str:
        return os.path.join(self.runs, f"fold-{fold}-of-{self.folds}")


def split_train_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """`[job flags] -- [trainer flags]` -> (job flags, trainer flags)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def check_train_args(train_args: list[str]) -> float:
    """The trainer flags, parsed and checked as `webpairs train` would (one clear line when
    they are wrong); -> their --val-fraction."""
    from trainer.cli import build_train_parser, run_config_from_args
    from trainer.configs import UserError

    own = [a for a in train_args if a.split("=", 1)[0] in _OWN_TRAIN_FLAGS]
    if own:
        raise InputError(f"trainer flag {own[0]} after --: --cross-fit sets it for each fold")
    parser = build_train_parser()
    args, unknown = parser.parse_known_args([*train_args, "--data", "x", "--output", "x"])
    if unknown:
        raise InputError(f"not a trainer flag (after --): {' '.join(unknown)}")
    try:
        run_config_from_args(args)
    except UserError as e:
        raise InputError(f"trainer flags after --: {e}") from None
    return args.val_fraction


def plan_cross_fit(source: Source, folds: int, runs: str | None, train_args: list[str]) -> CrossFit:
    """Driver side, before any work: K checked against the dataset, the trainer flags checked."""
    total = source.manifest.total_samples
    if folds < 2:
        raise InputError(
            f"--cross-fit {folds}: needs at least 2 folds (each pair is scored by a model "
            "trained on the other folds)"
        )
    if folds > total:
        raise InputError(f"--cross-fit {folds}: more folds than the {total} pairs of {source.path}")
    if runs is None:
        if is_remote(source.path):
            raise InputError("--cross-fit on a remote dataset needs --cross-fit-runs (local)")
        runs = join_path(source.path, RUNS_DIR)
    if is_remote(runs):
        raise InputError(f"--cross-fit-runs {runs}: the trainer writes runs to a local folder")
    val_fraction = check_train_args(train_args)
    return CrossFit(folds, os.path.abspath(runs), tuple(train_args), val_fraction)


# --- counting the folds ------------------------------------------------------------------------


def fold_entry(key: str, plan: CrossFit) -> tuple[int, bool]:
    """-> (its fold, whether its fold's trainer may read it): the trainer's --val-fraction
    pairs are read by none."""
    return fold_of(key, plan.folds), not in_validation(key, plan.val_fraction)


class CountFolds(beam.PTransform):
    """Rows -> one dict {(fold, trainable): rows}."""

    def __init__(self, plan: CrossFit):
        super().__init__()
        self.plan = plan

    def expand(self, rows):
        plan = self.plan
        return (
            rows
            | "Fold" >> beam.Map(lambda row: fold_entry(row["key"], plan))
            | "CountPerFold" >> beam.combiners.Count.PerElement()
            | "All" >> beam.combiners.ToDict()
        )


@dataclass(frozen=True)
class FoldCounts:
    rows: tuple[int, ...]  # rows of each fold (what its model scores)
    trainable: tuple[int, ...]  # rows of each fold outside the trainer's validation pairs

    def training_keys(self, fold: int) -> int:
        """Keys the model of `fold` may train on: the other folds' (less validation pairs)."""
        return sum(self.trainable) - self.trainable[fold]


def _save_counts(counts: dict, path: str, folds: int) -> None:
    rows = [counts.get((i, True), 0) + counts.get((i, False), 0) for i in range(folds)]
    trainable = [counts.get((i, True), 0) for i in range(folds)]
    with FileSystems.create(path) as f:
        f.write(json.dumps({"rows": rows, "trainable": trainable}).encode())


class SaveFoldCounts(beam.PTransform):
    """Metadata rows -> RUNS/folds.json: rows and trainable rows per fold (no image is read)."""

    def __init__(self, plan: CrossFit):
        super().__init__()
        self.plan = plan

    def expand(self, rows):
        path = os.path.join(self.plan.runs, FOLDS_NAME)
        return (
            rows
            | "CountFolds" >> CountFolds(self.plan)
            | "Save" >> beam.Map(_save_counts, path=path, folds=self.plan.folds)
        )


def load_fold_counts(plan: CrossFit) -> FoldCounts:
    """RUNS/folds.json, checked: an empty fold, or a model left nothing to train on, is an
    error before any training."""
    with open(os.path.join(plan.runs, FOLDS_NAME)) as f:
        saved = json.load(f)
    counts = FoldCounts(tuple(saved["rows"]), tuple(saved["trainable"]))
    for fold, n in enumerate(counts.rows):
        if n == 0:
            raise InputError(
                f"--cross-fit {plan.folds}: fold {fold} holds none of the "
                f"{sum(counts.rows)} pairs; use fewer folds"
            )
        if counts.training_keys(fold) == 0:
            raise InputError(
                f"--cross-fit {plan.folds}: fold {fold}'s model has no pair to train on"
            )
    return counts


# --- training ----------------------------------------------------------------------------------


def train_command(source: Source, plan: CrossFit, fold: int) -> list[str]:
    manifest = join_path(source.path, "manifest.json")
    return [
        sys.executable, "-m", "trainer", "train", "--data", manifest,
        "--output", plan.run_dir(fold), "--exclude-fold", f"{fold}/{plan.folds}",
        *plan.train_args,
    ]  # fmt: skip


def train_fold(source: Source, plan: CrossFit, fold: int) -> ScorerIdentity:
    """Trains the model of `fold` (a fresh run: an earlier one in its folder is removed) in its
    own process, its output in RUN/train.log; -> the identity of its last checkpoint."""
    run = plan.run_dir(fold)
    if os.path.exists(run):
        logger.info("removing the earlier run %s", run)
        shutil.rmtree(run)
    os.makedirs(run)
    log_path = os.path.join(run, "train.log")
    logger.info("training the scorer of fold %d of %d in %s", fold, plan.folds, run)
    with open(log_path, "w") as log:
        proc = subprocess.run(
            train_command(source, plan, fold), stdout=log, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        with open(log_path) as f:
            lines = [line.strip() for line in f if line.strip()]
        last = lines[-1] if lines else "no output"
        raise InputError(
            f"training the scorer of fold {fold} failed (exit {proc.returncode}): {last} "
            f"(log: {log_path})"
        )
    return identify_checkpoint(run)


def train_folds(source: Source, plan: CrossFit) -> list[ScorerIdentity]:
    return [train_fold(source, plan, fold) for fold in range(plan.folds)]


# --- scoring -----------------------------------------------------------------------------------


class ScoreFolds(beam.PTransform):
    """Rows with `_image` -> the same rows scored as ScorePairs scores them, each by the model of
    its fold (`scorers[fold_of(key, K)]`), never by one that trained on it."""

    def __init__(self, cfg: ScoreConfig, scorers: list[ScorerIdentity]):
        super().__init__()
        self.cfg, self.scorers = cfg, scorers

    def expand(self, rows):
        folds = len(self.scorers)
        parts = rows | "ByFold" >> beam.Partition(lambda row, n: fold_of(row["key"], n), folds)
        scored = [
            parts[fold]
            | f"ScoreFold{fold}"
            >> ScorePairs(dataclasses.replace(self.cfg, checkpoint=scorer.checkpoint), scorer)
            for fold, scorer in enumerate(self.scorers)
        ]
        return scored | "AllFolds" >> beam.Flatten()


def cross_fit_record(
    plan: CrossFit, scorers: list[ScorerIdentity], counts: FoldCounts, scored: dict[int, int]
) -> dict:
    """The manifest's `scorer` of a cross-fitted run: per fold, its model (checkpoint, sha256,
    preset), the keys it scored and the keys it may have trained on."""
    for fold, n in enumerate(counts.rows):
        if scored.get(fold, 0) != n:
            raise RuntimeError(f"fold {fold}: {scored.get(fold, 0)} rows scored, {n} counted")
    first = scorers[0].to_dict()
    shared = {k: first[k] for k in ("model", "embed_dim", "image_size", "context_length")}
    return {
        **shared,
        "cross_fit": {
            "folds": plan.folds,
            "rule": FOLD_RULE,
            "scheme": "model I trained on every fold but I, scores fold I only",
            "runs": plan.runs,
            "train_args": list(plan.train_args),
        },
        "folds": [
            {
                "fold": fold,
                **scorer.to_dict(),
                "scored_keys": counts.rows[fold],
                "training_keys": counts.training_keys(fold),
            }
            for fold, scorer in enumerate(scorers)
        ],
    }
