"""`webpairs score`: a checkpoint's CLIP scores and embeddings recorded in an existing output's
metadata, beside its shards. Each per-shard parquet gains (or has replaced) `clip_score`,
`image_embedding` and `text_embedding` (float16), row for row by sample key; the manifest's
`scorer` names the model by its checkpoint's sha256. The tars are not rewritten: their bytes,
sizes and sha256 stay as the manifest lists them (their `KEY.json` keeps the row as curated,
without the score: the parquet is the metadata).

    webpairs score --input out/ --score-checkpoint runs/tiny
    webpairs select --input out/ --output top30/ --recipe datacomp_clip_top30   # no model now
    webpairs score --input out/ --cross-fit 2 -- --model tiny --steps 2000   # no model yet:
    # one scorer per fold, each pair scored by the one that never saw it (scoring/crossfit.py)

  source shards ──► tar images + parquet rows ──► ScorePairs (RunInference) ──► by source shard
      ──► shards/NNNNN.parquet rewritten (atomically) with the score columns ──► manifest.scorer

Every row of every shard ends scored, or unscored (clip_score null: the model could not read
its image), counted as score/scored and score/undecodable. While the job runs the manifest
names no scorer, so a run that dies part-way leaves an output that reads as unscored.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import sys

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.accounting.progress import ReportProgress
from pipeline.curation.recipe import Recipe, load_recipe, with_score_model
from pipeline.io.reshard import ReadSource, Source, open_source
from pipeline.io.shards import save_manifest, write_atomically
from pipeline.io.url_lists import InputError
from pipeline.jobs.options import CurateOptions
from pipeline.jobs.shell import MonitorOptions, job_main, job_options, run_pipeline
from pipeline.results import parquet_schema
from pipeline.runners.local import new_pipeline
from pipeline.scoring.crossfit import (
    CrossFit,
    FoldCounts,
    SaveFoldCounts,
    ScoreFolds,
    cross_fit_record,
    load_fold_counts,
    plan_cross_fit,
    split_train_args,
    train_folds,
)
from pipeline.scoring.identity import ScorerIdentity
from pipeline.scoring.pairs import SCORE_COLUMN, ScoreConfig, ScorePairs, check_scoring
from schemas.folds import fold_of
from schemas.records import EMBEDDING_FIELDS

logger = logging.getLogger(__name__)


PROG = "webpairs score"


_SHARED = {
    "input",
    "score_checkpoint",
    "score_model",
    "score_pretrained",
    "recipe",
    "cross_fit",
    "cross_fit_runs",
}


class ScoreOptions(PipelineOptions):
    """`webpairs score`'s own flags (the others are curate's: --input, --score-checkpoint)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--cross-fit",
            dest="cross_fit",
            type=int,
            default=None,
            metavar="K",
            help="train K scorers, each on all folds but one, and score each pair only with "
            "the one that never saw it (trainer flags after --)",
        )
        parser.add_argument(
            "--cross-fit-runs",
            dest="cross_fit_runs",
            default=None,
            metavar="DIR",
            help="where the fold runs go (default: INPUT/cross-fit)",
        )


def scored_table(table: pa.Table, scores: dict, extra: tuple[pa.Field, ...]) -> pa.Table:
    """A shard's result table + {key: (score, image embedding, text embedding)} -> the table
    with the score columns set (earlier ones replaced), laid out as a scored output's parquet:
    result fields, pass-through columns, embeddings. A key without an entry is a bug."""
    keys = table.column("key").to_pylist()
    missing = [k for k in keys if k not in scores]
    if missing:
        raise RuntimeError(f"{len(missing)} rows were not scored, e.g. {missing[0]}")
    values = [scores[k] for k in keys]
    new = {
        SCORE_COLUMN: pa.array([v[0] for v in values], pa.float32()),
        "image_embedding": pa.array([v[1] for v in values], EMBEDDING_FIELDS[0].type),
        "text_embedding": pa.array([v[2] for v in values], EMBEDDING_FIELDS[1].type),
    }
    schema = pa.schema(list(parquet_schema(extra)) + list(EMBEDDING_FIELDS))
    columns = []
    for f in schema:
        if f.name in new:
            columns.append(new[f.name])
        elif f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        else:  # a field this output's schema version did not have yet
            columns.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _score_entry(row: dict) -> tuple[str, tuple]:
    """A scored row -> (its source shard, (key, (score, image emb, text emb)))."""
    value = (row.get(SCORE_COLUMN), row.get("image_embedding"), row.get("text_embedding"))
    return row["shard"], (row["key"], value)


class _WriteScoredParquetFn(beam.DoFn):
    """(shard name, {"shard": [SourceShard], "scores": [(key, value)]}) -> its parquet
    rewritten with the scores; -> the number of rows."""

    def __init__(self, extra: tuple[pa.Field, ...]):
        self.extra = extra
        self.shards = Metrics.counter("score", "shards")

    def process(self, element):
        _, groups = element
        (shard,) = groups["shard"]  # SourceShard
        with FileSystems.open(shard.parquet) as f:
            table = pq.read_table(io.BytesIO(f.read()))
        table = scored_table(table, dict(groups["scores"]), self.extra)
        write_atomically(shard.parquet, lambda f: pq.write_table(table, f))
        self.shards.inc()
        yield table.num_rows


def _record_scorer(counts: list[int], source: Source, scorer: dict) -> None:
    """All shards written: the manifest names the model (the last thing the job writes)."""
    if len(counts) != len(source.shards):
        raise RuntimeError(f"{len(counts)} of {len(source.shards)} shards were rewritten")
    if sum(counts) != source.manifest.total_samples:
        raise RuntimeError(
            f"{sum(counts)} rows scored, the manifest lists {source.manifest.total_samples}"
        )
    save_manifest(dataclasses.replace(source.manifest, scorer=scorer), source.path)


class ScoreDataset(beam.PTransform):
    """PBegin -> the source's per-shard parquet rewritten with the scores, then its manifest.
    With `cross_fit` (the plan, one scorer per fold, the rows per fold): each row is scored by
    its fold's model (pipeline/scoring/crossfit.py), and the manifest names every fold's."""

    def __init__(
        self,
        source: Source,
        cfg: ScoreConfig,
        scorer: ScorerIdentity | None = None,
        cross_fit: tuple[CrossFit, list[ScorerIdentity], FoldCounts] | None = None,
    ):
        super().__init__()
        self.source, self.cfg, self.scorer, self.cross_fit = source, cfg, scorer, cross_fit

    def expand(self, pbegin):
        cfg = dataclasses.replace(self.cfg, embeddings=True)
        rows = pbegin | "ReadImages" >> ReadSource(self.source, images=True)
        if self.cross_fit is None:
            scored = rows | "ScorePairs" >> ScorePairs(cfg, self.scorer)
            record = pbegin | "Scorer" >> beam.Create([self.scorer.to_dict()])
        else:
            plan, scorers, fold_rows = self.cross_fit
            scored = rows | "ScoreFolds" >> ScoreFolds(cfg, scorers)
            record = (
                scored
                | "FoldOf" >> beam.Map(lambda row: fold_of(row["key"], plan.folds))
                | "ScoredPerFold" >> beam.combiners.Count.PerElement()
                | "AllFolds" >> beam.combiners.ToDict()
                | "Scorers" >> beam.Map(lambda n: cross_fit_record(plan, scorers, fold_rows, n))
            )
        scores = (
            scored
            | "ReportProcessed" >> beam.ParDo(ReportProgress(self.source.path, "processed"))
            | "ByShard" >> beam.Map(_score_entry)
        )
        shards = pbegin | "Shards" >> beam.Create([(s.name, s) for s in self.source.shards])
        counts = (
            {"shard": shards, "scores": scores}
            | "JoinShard" >> beam.CoGroupByKey()
            | "WriteParquet" >> beam.ParDo(_WriteScoredParquetFn(self.source.extra_fields))
        )
        return (
            counts
            | "AllShards" >> beam.combiners.ToList()
            | "RecordScorer"
            >> beam.Map(_record_scorer, source=self.source, scorer=beam.pvalue.AsSingleton(record))
        )


def config_from_options(opts: CurateOptions) -> tuple[str, ScoreConfig]:
    given = set(opts.get_all_options(current_only=True, drop_default=True))
    unused = sorted(given - _SHARED)
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise InputError(
            f"{flags}: not a score option (score reads an output, writes its metadata)"
        )
    if not opts.input:
        raise InputError("--input (a webpairs output) is required")
    cfg = load_recipe(opts.recipe).score if "recipe" in given else ScoreConfig()
    if opts.score_checkpoint:
        cfg = dataclasses.replace(cfg, checkpoint=opts.score_checkpoint)
    try:
        score = with_score_model(
            Recipe(score=cfg), opts.score_model, opts.score_pretrained, opts.score_checkpoint
        ).score
    except ValueError as e:
        raise InputError(str(e)) from None
    cross_fit = opts.view_as(ScoreOptions).cross_fit
    if cross_fit is not None and score.checkpoint:
        raise InputError("--cross-fit trains its own scorers: drop --score-checkpoint")
    if cross_fit is None and not score.checkpoint:
        raise InputError(
            "--score-checkpoint (a trainer checkpoint or run folder) is required (or "
            "--score-model ARCH --score-pretrained WEIGHTS, or --cross-fit K)"
        )
    cfg = score
    return opts.input, cfg


def score_cross_fitted(
    argv: list[str], options, source: Source, cfg: ScoreConfig, train_args: list[str]
) -> ScoreDataset:
    """Counts the folds, trains a model per fold, scores each fold with its model."""
    own = options.view_as(ScoreOptions)
    plan = plan_cross_fit(source, own.cross_fit, own.cross_fit_runs, train_args)
    os.makedirs(plan.runs, exist_ok=True)
    p = new_pipeline(job_options(argv))
    _ = p | "ReadMetadata" >> ReadSource(source) | "SaveFoldCounts" >> SaveFoldCounts(plan)
    run_pipeline(p, source.path)
    counts = load_fold_counts(plan)
    logger.info("cross-fit: %d folds of %s pairs", plan.folds, "/".join(map(str, counts.rows)))
    scorers = train_folds(source, plan)
    return ScoreDataset(source, cfg, cross_fit=(plan, scorers, counts))


def run(argv: list[str]) -> tuple[Source, dict]:
    """-> (the source, {counter name: value}) once its metadata records the scores."""
    argv, train_args = split_train_args(argv)
    options = job_options(argv)
    spec, cfg = config_from_options(options.view_as(CurateOptions))
    cross_fit = options.view_as(ScoreOptions).cross_fit
    if train_args and cross_fit is None:
        raise InputError(f"trainer flags after -- ({train_args[0]} ...) need --cross-fit K")
    if options.view_as(MonitorOptions).report_to:
        raise InputError("--report-to: score has no funnel to report (curate and select do)")
    source = open_source(spec)
    if cross_fit is None:
        scorer = check_scoring(cfg, ())  # loads the model once, here: one clear error if unusable
        transform = ScoreDataset(source, cfg, scorer)
        logger.info("scoring %s with %s", source.path, scorer.checkpoint)
    else:
        transform = score_cross_fitted(argv, options, source, cfg, train_args)
        logger.info("scoring %s, each fold with the model trained without it", source.path)
    if source.manifest.scorer is not None:  # stale scores until every shard is rewritten
        save_manifest(dataclasses.replace(source.manifest, scorer=None), source.path)
    p = new_pipeline(options)
    _ = p | "ScoreDataset" >> transform
    result = run_pipeline(p, source.path, PROG, total=source.manifest.total_samples)
    counters = result.metrics().query(MetricsFilter().with_namespace("score"))["counters"]
    totals: dict[str, int] = {}
    for c in counters:  # one ScorePairs step per fold: the same counter in each
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + c.committed
    return source, totals


def _help(prog: str) -> str:
    return (
        f"usage: {prog} --input OUTPUT --score-checkpoint RUN_OR_FILE [--recipe RECIPE]\n"
        f"       {prog} --input OUTPUT --score-model ARCH --score-pretrained WEIGHTS\n\n"
        f"       {prog} --input OUTPUT --cross-fit K [--cross-fit-runs DIR] [-- TRAINER FLAGS]\n\n"
        "Record a trainer checkpoint's CLIP score and embeddings in a webpairs output's\n"
        "per-shard parquet (the tars are not rewritten); the manifest names the model.\n"
        "--cross-fit K: split the pairs into K folds by key hash, train K scorers with\n"
        "`webpairs train` (the flags after --, default: its own: --model tiny), model I on\n"
        "every fold but I, into DIR/fold-I-of-K (default INPUT/cross-fit), and score each\n"
        "pair only with the model that never trained on it; the manifest's scorer lists\n"
        "each fold's checkpoint, sha256, scored keys and training keys.\n"
        "--recipe: only its `score` section (batch_size, device, threads, large_model) is\n"
        "read. Any Beam pipeline option (--runner, --direct_num_workers, ...) is accepted;\n"
        "--runner dask with --dask-address tcp://HOST:PORT or --dask-workers N.\n"
        "--progress-every SECONDS: a progress line this often (default: 1 s on a terminal,\n"
        "30 s otherwise; 0: none).\n"
    )


def _run_and_summarise(argv: list[str]) -> str:
    source, counts = run(argv)
    cross_fit = any(a.split("=", 1)[0] == "--cross-fit" for a in argv)
    models = "the models, one per fold" if cross_fit else "the model"
    return (
        f"scored {counts.get('scored', 0)} pairs in {len(source.shards)} shards"
        f" ({counts.get('undecodable', 0)} unreadable); {source.path}/manifest.json names {models}"
    )


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    return job_main(argv, prog, _help, _run_and_summarise)


if __name__ == "__main__":
    sys.exit(main())
