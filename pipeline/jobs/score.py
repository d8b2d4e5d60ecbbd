"""`webpairs score`: a checkpoint's CLIP scores and embeddings recorded in an existing output's
metadata, beside its shards. Each per-shard parquet gains (or has replaced) `clip_score`,
`image_embedding` and `text_embedding` (float16), row for row by sample key; the manifest's
`scorer` names the model by its checkpoint's sha256. The tars are not rewritten: their bytes,
sizes and sha256 stay as the manifest lists them (their `KEY.json` keeps the row as curated,
without the score: the parquet is the metadata).

    webpairs score --input out/ --score-checkpoint runs/tiny
    webpairs select --input out/ --output top30/ --recipe datacomp_clip_top30   # no model now

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
import sys

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from pipeline.curation.recipe import Recipe, load_recipe, with_score_model
from pipeline.io.reshard import ReadSource, Source, open_source
from pipeline.io.shards import save_manifest, write_atomically
from pipeline.io.url_lists import InputError
from pipeline.jobs.options import CurateOptions
from pipeline.jobs.shell import job_main, job_options, run_pipeline
from pipeline.results import parquet_schema
from pipeline.scoring.identity import ScorerIdentity
from pipeline.scoring.pairs import SCORE_COLUMN, ScoreConfig, ScorePairs, check_scoring
from schemas.records import EMBEDDING_FIELDS

logger = logging.getLogger(__name__)


PROG = "webpairs score"


_SHARED = {"input", "score_checkpoint", "score_model", "score_pretrained", "recipe"}


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
    """PBegin -> the source's per-shard parquet rewritten with the scores, then its manifest."""

    def __init__(self, source: Source, cfg: ScoreConfig, scorer: ScorerIdentity):
        super().__init__()
        self.source, self.cfg, self.scorer = source, cfg, scorer

    def expand(self, pbegin):
        cfg = dataclasses.replace(self.cfg, embeddings=True)
        scores = (
            pbegin
            | "ReadImages" >> ReadSource(self.source, images=True)
            | "ScorePairs" >> ScorePairs(cfg, self.scorer)
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
            >> beam.Map(_record_scorer, source=self.source, scorer=self.scorer.to_dict())
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
    if not score.checkpoint:
        raise InputError(
            "--score-checkpoint (a trainer checkpoint or run folder) is required (or "
            "--score-model ARCH --score-pretrained WEIGHTS)"
        )
    cfg = score
    return opts.input, cfg


def run(argv: list[str]) -> tuple[Source, dict]:
    """-> (the source, {counter name: value}) once its metadata records the scores."""
    options = job_options(argv)
    spec, cfg = config_from_options(options.view_as(CurateOptions))
    source = open_source(spec)
    scorer = check_scoring(cfg, ())  # loads the model once, here: one clear error if unusable
    if source.manifest.scorer is not None:  # stale scores until every shard is rewritten
        save_manifest(dataclasses.replace(source.manifest, scorer=None), source.path)
    p = beam.Pipeline(options=options)
    _ = p | "ScoreDataset" >> ScoreDataset(source, cfg, scorer)
    logger.info("scoring %s with %s", source.path, scorer.checkpoint)
    result = run_pipeline(p, source.path)
    counters = result.metrics().query(MetricsFilter().with_namespace("score"))["counters"]
    return source, {c.key.metric.name: c.committed for c in counters}


def _help(prog: str) -> str:
    return (
        f"usage: {prog} --input OUTPUT --score-checkpoint RUN_OR_FILE [--recipe RECIPE]\n"
        f"       {prog} --input OUTPUT --score-model ARCH --score-pretrained WEIGHTS\n\n"
        "Record a trainer checkpoint's CLIP score and embeddings in a webpairs output's\n"
        "per-shard parquet (the tars are not rewritten); the manifest names the model.\n"
        "--recipe: only its `score` section (batch_size, device, threads, large_model) is\n"
        "read. Any Beam pipeline option (--runner, --direct_num_workers, ...) is accepted;\n"
        "--runner dask with --dask-address tcp://HOST:PORT or --dask-workers N.\n"
    )


def _run_and_summarise(argv: list[str]) -> str:
    source, counts = run(argv)
    return (
        f"scored {counts.get('scored', 0)} pairs in {len(source.shards)} shards"
        f" ({counts.get('undecodable', 0)} unreadable); {source.path}/manifest.json names the model"
    )


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    return job_main(argv, prog, _help, _run_and_summarise)


if __name__ == "__main__":
    sys.exit(main())
