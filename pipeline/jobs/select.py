"""`webpairs select`: a new dataset made from an existing output by rules over its recorded
metadata, without downloading or decoding an image again (tar members are copied as they are).

    webpairs select --input out/ --output top30/ --recipe datacomp_clip_top30
    webpairs select --input out/ --output top30/ --recipe datacomp_clip_top30 --score-checkpoint runs/tiny
    webpairs select --input out/ --output big/ --where 'original_width>=512' --where 'language in en,de'

  per-shard parquet ──► [ScorePairs over the tar images, with --score-checkpoint]
      ──► [caption language, when a filter asks for it] ──► --where rules ──► recipe stages (filters, clip_score, semantic_dedupe, dedupes, ...)
      ──► kept: balanced shards, globally shuffled by --seed ──► tar members copied ──► shards
      └─► removed: rejects/ + stats.json (source samples = written + filtered + duplicate)

Keys are the source's. Shards hold ceil(N / S) or floor(N / S) samples (S = ceil(N /
--samples-per-shard)), in an order drawn from --seed: the sample order over all shards is a
uniform permutation, the same on every run and runner (pipeline/io/reshard.py). The manifest's
`source` names the input dataset and its `scorer` the model behind the recorded scores.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, replace

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.accounting.progress import ReportProgress
from pipeline.curation.captions import AnnotateCaptions, CaptionConfig
from pipeline.curation.recipe import ApplyStages, Recipe, load_recipe, with_overrides
from pipeline.curation.rules import Rule, Where, check_rules, parse_rule
from pipeline.io.reshard import ReadSampleImages, ReadSource, Reshard, Source, open_source
from pipeline.io.shards import ShardConfig, public_row
from pipeline.io.url_lists import InputError
from pipeline.jobs import shell
from pipeline.jobs.options import CurateOptions
from pipeline.jobs.shell import (
    MonitorOptions,
    finish,
    gallery_config,
    job_main,
    job_options,
    run_pipeline,
    summary_line,
    write_tail,
)
from pipeline.runners.cluster import DaskClusterOptions
from pipeline.runners.local import new_pipeline
from pipeline.scoring.identity import ScorerIdentity, is_remote
from pipeline.scoring.pairs import ScorePairs, check_scoring
from schemas import Stats
from schemas.records import EMBEDDING_FIELD_NAMES, EMBEDDING_FIELDS

logger = logging.getLogger(__name__)


PROG = "webpairs select"


def _reject_rows(element):
    """(key, {"rows": [row], "removed": [decision]}) -> the row with its decision applied."""
    _, groups = element
    decisions = list(groups["removed"])
    for row in groups["rows"]:
        if decisions:
            d = decisions[0]
            yield {
                **row,
                "status": d["status"],
                "reason": d["reason"],
                "duplicate_of": d["duplicate_of"],
                "error": d["error"],
            }


def _without_embeddings(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in EMBEDDING_FIELD_NAMES}


@dataclass(frozen=True)
class SelectConfig:
    input: str
    output: str
    recipe: Recipe = Recipe(stages=())
    rules: tuple[Rule, ...] = ()
    seed: int = 0  # the shuffle: same seed, same shards
    samples_per_shard: int = 10_000
    overwrite: bool = False


def build(
    p: beam.Pipeline,
    cfg: SelectConfig,
    source: Source,
    scorer: ScorerIdentity | None,
    options_record: dict,
) -> None:
    if scorer is not None:
        rows = (
            p
            | "ReadImages" >> ReadSource(source, images=True)
            | "ScorePairs" >> ScorePairs(cfg.recipe.score, scorer)
            | "DropBytes" >> beam.Map(public_row)
        )
    else:
        rows = p | "ReadMetadata" >> ReadSource(source)
    if cfg.recipe.detects_language:  # from the recorded captions: no image is read for it
        captions = CaptionConfig(
            detect_language=True, candidate_languages=cfg.recipe.captions.candidate_languages
        )
        rows = rows | "DetectLanguage" >> AnnotateCaptions(captions)
    input_count = rows | "CountInput" >> beam.combiners.Count.Globally()
    _ = rows | "ReportProcessed" >> beam.ParDo(ReportProgress(cfg.output, "processed"))

    stages = [("Where", Where(cfg.rules))] if cfg.rules else []
    stages += [(f"Select:{s}", cfg.recipe.transform(s, cfg.output)) for s in cfg.recipe.stages]
    selected = rows | "Selection" >> ApplyStages(stages)
    light, decisions = selected["kept"], selected["removed"]

    extra = source.extra_fields
    if (scorer is not None and cfg.recipe.score.embeddings) or (
        scorer is None and source.has_embeddings
    ):
        extra += EMBEDDING_FIELDS
    shard_cfg = ShardConfig(cfg.output, cfg.samples_per_shard, extra_fields=extra)
    written = light | "Reshard" >> Reshard(source, shard_cfg, cfg.seed)
    rejects = (
        {
            "rows": rows | "KeyRows" >> beam.Map(lambda r: (r["key"], _without_embeddings(r))),
            "removed": decisions | "KeyDecisions" >> beam.Map(lambda d: (d["key"], d)),
        }
        | "JoinDecisions" >> beam.CoGroupByKey()
        | "RejectRows" >> beam.FlatMap(_reject_rows)
    )
    write_tail(
        cfg.output,
        written=written,
        rejects=rejects,
        results=(written["rows"], rejects)
        | "AllResults" >> beam.Flatten()
        | "ReportDone" >> beam.ParDo(ReportProgress(cfg.output, "done")),
        input_count=input_count,
        extra_fields=source.extra_fields,
        options_record=options_record,
        source=source.path,
        scorer=scorer.to_dict() if scorer is not None else source.manifest.scorer,
        gallery=gallery_config(cfg.output, cfg.recipe),
        gallery_rows={
            "rejected": p | "NothingUncurated" >> beam.Create([]),
            "removed": decisions,
            "kept": light,
            # light rows, each naming its source shard, whose tar gives the sampled rows' bytes;
            # taken after the selection, not from `rows`: on the FnApiRunner a stage reading `rows`
            # and waiting on the sample (made from the selection of `rows`) never runs
            "images": (light, rejects) | "GalleryRows" >> beam.Flatten(),
        },
        fetch_images=ReadSampleImages(source),
    )


class SelectOptions(PipelineOptions):
    """The flags only select has. It shares --input, --output, --recipe, --stages,
    --score-checkpoint, --samples-per-shard, --overwrite and the curation shortcuts with
    `webpairs curate` (CurateOptions): Beam refuses a flag that two option classes define."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("selection")
        g.add_argument(
            "--where",
            dest="where",
            action="append",
            default=None,
            help="keep rows where COLUMN OP VALUE holds (OP: == != < <= > >= in 'not in'); repeatable",
        )
        g.add_argument(
            "--seed", dest="seed", type=int, default=0, help="the global shuffle of the new shards"
        )


_SHARED = {
    "input",
    "output",
    "recipe",
    "stages",
    "score_checkpoint",
    "score_model",
    "score_pretrained",
    "samples_per_shard",
    "overwrite",
    "languages",
    "near_dup_threshold",
    "blocklist",
    "decontaminate",
}


def config_from_options(shared: CurateOptions, own: SelectOptions) -> SelectConfig:
    given = set(shared.get_all_options(current_only=True, drop_default=True))
    unused = sorted(given - _SHARED)
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise InputError(f"{flags}: not a select option (select neither downloads nor decodes)")
    if not shared.input or not shared.output:
        raise InputError("--input (a webpairs output) and --output are required")
    if shared.samples_per_shard < 1:
        raise InputError(f"--samples-per-shard must be at least 1, got {shared.samples_per_shard}")
    recipe = load_recipe(shared.recipe) if "recipe" in given else Recipe(stages=())
    recipe = with_overrides(
        recipe,
        stages=shared.stages,
        near_dup_threshold=shared.near_dup_threshold,
        languages=shared.languages,
        blocklist=shared.blocklist,
        decontaminate=shared.decontaminate,
        score_checkpoint=shared.score_checkpoint,
        score_model=shared.score_model,
        score_pretrained=shared.score_pretrained,
    )
    if recipe.captions.clean:
        raise InputError(
            "select keeps captions as recorded: clean them with curate (captions: {clean: true})"
        )
    return SelectConfig(
        input=shared.input,
        output=shared.output,
        recipe=recipe,
        rules=tuple(parse_rule(r) for r in own.where or ()),
        seed=own.seed,
        samples_per_shard=shared.samples_per_shard,
        overwrite=shared.overwrite,
    )


def prepare_output(cfg: SelectConfig, source: Source) -> None:
    out = cfg.output.rstrip("/")
    if not is_remote(out) and os.path.abspath(out) == source.path:
        raise InputError("--output must differ from --input: select writes a new dataset")
    shell.prepare_output(out, cfg.overwrite)


def run(argv: list[str]) -> Stats:
    options = job_options(argv)
    cfg = config_from_options(options.view_as(CurateOptions), options.view_as(SelectOptions))
    source = open_source(cfg.input)
    check_rules(cfg.rules, source.schema)
    stages = cfg.recipe.stages
    wants_scores = "clip_score" in stages or any(r.column == "clip_score" for r in cfg.rules)
    if wants_scores and not cfg.recipe.score.checkpoint and not source.scored:
        raise InputError(
            f"--input {cfg.input} records no clip_score: pass --score-checkpoint to score it"
        )
    scorer = check_scoring(cfg.recipe.score, stages, source_scored=source.scored)
    embeddings = cfg.recipe.score.embeddings if scorer else source.has_embeddings
    if "semantic_dedupe" in stages and not embeddings:
        raise InputError("semantic_dedupe needs image embeddings: score with embeddings on")
    prepare_output(cfg, source)
    record = {
        **options.view_as(CurateOptions).get_all_options(current_only=True, drop_default=True),
        **options.view_as(SelectOptions).get_all_options(current_only=True),
    }
    record.pop("overwrite", None)
    p = new_pipeline(options)
    build(p, replace(cfg, output=cfg.output.rstrip("/")), source, scorer, record)
    logger.info("selecting %s -> %s", source.path, cfg.output)
    run_pipeline(p, cfg.output, PROG, total=source.manifest.total_samples)
    return finish(cfg.output, options)


def _help(prog: str) -> str:
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog, description="A new dataset from an existing output, by rules over its metadata."
    )
    g = parser.add_argument_group(
        "shared with curate", "also --languages, --near-dup-threshold, --blocklist, --decontaminate"
    )
    g.add_argument("--input", help="a webpairs output folder (or its manifest.json)")
    g.add_argument("--output", help="the new dataset folder")
    g.add_argument(
        "--recipe", help="preset or JSON/YAML recipe: filters, clip_score, semantic_dedupe, ..."
    )
    g.add_argument("--stages", help="override the recipe's stages, comma-separated")
    g.add_argument("--score-checkpoint", help="score every pair with this trainer checkpoint first")
    g.add_argument("--samples-per-shard", type=int, default=10_000)
    g.add_argument("--overwrite", action="store_true")
    SelectOptions._add_argparse_args(parser)
    DaskClusterOptions._add_argparse_args(parser)
    MonitorOptions._add_argparse_args(parser)
    return (
        parser.format_help()
        + "\nAny Beam pipeline option (--runner, --direct_num_workers, ...) is accepted too.\n"
    )


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    return job_main(argv, prog, _help, lambda a: summary_line(run(a)))


if __name__ == "__main__":
    sys.exit(main())
