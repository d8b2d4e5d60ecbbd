"""The curation job: URL lists in, WebDataset shards out.

    python -m pipeline.curate --input urls.parquet --output out/ \
        --resize-mode keep_ratio --image-size 256 --runner DirectRunner

    ReadPairs -> DedupeUrls -> DownloadImages -> DecodeResize -> WriteShards
                                                      └─ every other row -> rejects/ + stats.json
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from functools import partial

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from pipeline.accounting.gallery import GallerySample, ShowRow, shown_keys
from pipeline.accounting.progress import ReportProgress
from pipeline.crawl.concurrency import start_forkserver
from pipeline.crawl.decode import DecodeResize
from pipeline.crawl.download import DownloadImages
from pipeline.crawl.images import decode_rows
from pipeline.curation.captions import AnnotateCaptions
from pipeline.curation.dedupe.urls import DedupeUrls
from pipeline.curation.recipe import ApplyStages
from pipeline.io.layout import (
    MANIFEST_NAME,
    STAGING_DIR,
    join_path,
)
from pipeline.io.previous import ExcludePrevious
from pipeline.io.read_shards import ReadShards, ShardInput, list_tars
from pipeline.io.shards import WriteShards, light_row, public_row
from pipeline.io.staging import ReadStaged, SkipStaged, StageRows, staging_dir
from pipeline.io.url_lists import InputError, ReadPairs, resolve
from pipeline.jobs.options import (
    CurateConfig,
    CurateOptions,
    config_from_options,
    in_process_runner,
)
from pipeline.jobs.shell import (
    MonitorOptions,
    clear,
    existing_outputs,
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
from pipeline.scoring.identity import ScorerIdentity
from pipeline.scoring.pairs import ScorePairs, check_scoring
from schemas import Stats, Status
from schemas.records import EMBEDDING_FIELDS

logger = logging.getLogger(__name__)


PROG = "webpairs curate"


def read_and_fetch(p: beam.Pipeline, cfg: CurateConfig) -> dict:
    """-> {"images": decoded rows (ok with `_image`, or not ok), "url_duplicates", "invalid",
    "input_count", "warnings", "planned" (the count of rows to decode)}: the source half of the
    job, logged to the staging area on the way."""
    extra = cfg.read.extra_fields
    if cfg.read.input_format == "webdataset":
        # Existing shards: no download; keys come from the source shard and sample key.
        read = p | "ReadShards" >> ReadShards(ShardInput(cfg.read.input, cfg.read.extra_cols))
        url_duplicates = p | "NoUrlDuplicates" >> beam.Create([])
        fetched = read["rows"]
        planned = fetched
        warnings = read["warnings"]
    else:
        read = p | "ReadPairs" >> ReadPairs(cfg.read)
        # every input row, counted as read: a shuffle (DedupeUrls) separates reading from
        # downloading, so the total is known before the first download, and the ETA with it
        _ = (
            (read["pairs"], read["invalid"])
            | "InputRows" >> beam.Flatten()
            | "ReportTotal" >> beam.ParDo(ReportProgress(cfg.output, "total"))
        )
        warnings = p | "NoWarnings" >> beam.Create([])
        deduped = read["pairs"] | "DedupeUrls" >> DedupeUrls()
        url_duplicates = deduped["duplicates"]
        pairs = deduped["unique"]
        if cfg.incremental:
            fresh = pairs | "ExcludePrevious" >> ExcludePrevious(cfg.incremental)
            pairs = fresh["pairs"]
            url_duplicates = (
                url_duplicates,
                fresh["duplicates"],
            ) | "AllUrlDuplicates" >> beam.Flatten()
        planned = pairs  # staged or not: a resumed run shards as the whole run would
        if cfg.resume:
            staged = p | "ReadStaged" >> ReadStaged(cfg.output)
            pairs = {"pairs": pairs, "staged": staged} | "SkipStaged" >> SkipStaged()
        fetched = pairs | "DownloadImages" >> DownloadImages(cfg.download)
    images = fetched | "DecodeResize" >> DecodeResize(cfg.image)
    _ = images | "ReportProcessed" >> beam.ParDo(ReportProgress(cfg.output, "processed"))
    if cfg.staging:
        images = images | "StageRows" >> StageRows(cfg.output, extra, cfg.staging_flush_rows)
    if cfg.resume and cfg.read.input_format != "webdataset":
        images = (images, staged) | "WithStaged" >> beam.Flatten()
    return {
        "images": images,
        "url_duplicates": url_duplicates,
        "invalid": read["invalid"],
        "input_count": read["input_count"],
        "warnings": warnings,
        # how many rows the job sets out to decode: the shard count is sized from it (WriteShards)
        "planned": planned | "CountPlanned" >> beam.combiners.Count.Globally().without_defaults(),
    }


def _split_ok(row):
    """Ok rows (with their bytes) on the main output; the rest, without bytes, on "not_ok"."""
    if row["status"] == Status.OK:
        yield row
    else:
        yield beam.pvalue.TaggedOutput("not_ok", public_row(row))


def curate_and_write(source: dict, cfg: CurateConfig, scorer: ScorerIdentity | None = None) -> dict:
    """read_and_fetch's output -> [scoring] -> curation stages -> shards, and the audit
    gallery's sample and thumbnails (made in the shard writer, where the bytes are).
    -> {"rows": written, "removed", "shards" (WriteShards'), "uncurated" (rows not written that
    never reached curation: no image), "gallery_rows" (Gallery's inputs)}."""
    images = source["images"]
    split = images | "SplitOk" >> beam.ParDo(_split_ok).with_outputs("not_ok", main="ok")
    ok, not_ok = split.ok, split.not_ok
    recipe = cfg.recipe
    if recipe.captions.clean or recipe.detects_language:
        captions = replace(recipe.captions, detect_language=recipe.detects_language)
        ok = ok | "AnnotateCaptions" >> AnnotateCaptions(captions)
    extra = cfg.read.extra_fields
    if scorer is not None:
        ok = ok | "ScorePairs" >> ScorePairs(recipe.score, scorer)
        extra += EMBEDDING_FIELDS if recipe.score.embeddings else ()
    light = ok | "LightRows" >> beam.Map(light_row)
    stages = [(f"Curate:{s}", recipe.transform(s, cfg.output)) for s in recipe.stages]
    curated = light | "Curation" >> ApplyStages(stages)
    uncurated = (
        not_ok,
        source["url_duplicates"],
        source["invalid"],
    ) | "Uncurated" >> beam.Flatten()
    gallery = gallery_config(cfg.output, recipe)
    sample = {
        "rejected": uncurated,
        "removed": curated["removed"],
        "kept": curated["kept"],
    } | "GallerySample" >> GallerySample(gallery)
    shards_cfg = replace(cfg.shards, extra_fields=extra)
    written = {
        "rows": ok,
        "survivors": curated["kept"],
        "removed": curated["removed"],
        "planned": source["planned"],
        "wanted": sample | "GalleryKeys" >> beam.Map(shown_keys),
    } | "WriteShards" >> WriteShards(shards_cfg, show=ShowRow(gallery))
    return {
        **written,
        "uncurated": uncurated,
        "gallery_rows": {"sample": sample, "shown": written["shown"]},
    }


def build(
    p: beam.Pipeline, cfg: CurateConfig, options_record: dict, scorer: ScorerIdentity | None = None
) -> None:
    """The job graph. `cfg.read` must be resolved (see read.resolve); `scorer` is the checked
    model of the recipe's `score` section (score.check_scoring)."""
    source = read_and_fetch(p, cfg)
    written = curate_and_write(source, cfg, scorer)
    rejects = (written["uncurated"], written["removed"]) | "AllRejects" >> beam.Flatten()
    results = (
        (written["rows"], rejects)
        | "AllResults" >> beam.Flatten()
        | "ReportDone" >> beam.ParDo(ReportProgress(cfg.output, "done"))
    )
    write_tail(
        cfg.output,
        written=written,
        rejects=rejects,
        results=results,
        input_count=source["input_count"],
        extra_fields=cfg.read.extra_fields,
        options_record=options_record,
        source=cfg.incremental or cfg.retry_failed,  # this output extends that one
        scorer=scorer.to_dict() if scorer else None,
        gallery=gallery_config(cfg.output, cfg.recipe),
        gallery_rows=written["gallery_rows"],
        warnings=source["warnings"],
    )


def prepare_output(cfg: CurateConfig) -> None:
    """Refuse to clobber a run unless asked; clear it for --overwrite; keep the staging log
    (and only it) for --resume."""
    out = cfg.output
    finished = FileSystems.exists(join_path(out, MANIFEST_NAME))
    leftovers = existing_outputs(out)
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite contradict each other; pass one")
    if cfg.resume:
        if finished:
            raise InputError(
                f"--output {out} holds a finished run: nothing to resume (--overwrite redoes it)"
            )
        if not FileSystems.exists(staging_dir(out)):
            logger.info("--resume: nothing was staged in %s; starting from the beginning", out)
        leftovers = [p for p in leftovers if not p.rstrip("/").endswith(STAGING_DIR)]
    elif leftovers and not cfg.overwrite:
        what = "a finished run" if finished else "an unfinished run (--resume continues it)"
        raise InputError(f"--output {out} already holds {what}; pass --overwrite to replace it")
    clear(leftovers)


def run(argv: list[str]) -> Stats:
    options = job_options(argv)
    opts = options.view_as(CurateOptions)
    cfg = config_from_options(opts)
    if (cfg.read.input_format or "") == "webdataset" or cfg.read.input.lower().endswith(
        (".tar", MANIFEST_NAME)
    ):
        list_tars(cfg.read.input)  # fails early, with one line, when nothing matches
        extra = tuple(pa.field(c, pa.string()) for c in cfg.read.extra_cols)  # json values, as text
        cfg = replace(cfg, read=replace(cfg.read, input_format="webdataset", extra_fields=extra))
    else:
        cfg = replace(cfg, read=resolve(cfg.read))
    scorer = check_scoring(cfg.recipe.score, cfg.recipe.stages)  # loads the model once, here
    prepare_output(cfg)
    if cfg.image.processes and in_process_runner(options):
        # the decode workers' forkserver imports while the job is built (on other runners the
        # pools live in the runner's own worker processes)
        start_forkserver(partial(decode_rows, cfg=cfg.image))
    record = {
        k: v
        for k, v in opts.get_all_options(current_only=True).items()
        if k not in ("overwrite", "resume", "keep_staging", "staging", "staging_flush_rows")
    }

    p = new_pipeline(options)
    build(p, cfg, record, scorer)
    logger.info(
        "curating %s -> %s on %s",
        cfg.read.input,
        cfg.output,
        options.view_as(StandardOptions).runner,
    )
    run_pipeline(p, cfg.output, PROG)

    stats = finish(cfg.output, options)  # fails loudly when a row was lost or counted twice
    if not opts.keep_staging and FileSystems.exists(staging_dir(cfg.output)):
        FileSystems.delete([staging_dir(cfg.output)])  # the run is complete: the crawl log is spent
    return stats


def _help(prog: str) -> str:
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog, description="URL lists in, WebDataset shards out (Apache Beam)."
    )
    CurateOptions._add_argparse_args(parser)
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
