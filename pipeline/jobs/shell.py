"""The shell every job runs in: its Beam options (flags checked, DirectRunner by default), the
output folder prepared, the tail every job writes once (rejects/, manifest.json, stats.json,
report.html, the accounting checked), the summary line, and `job_main` (one clear error line
for a user mistake, the exit code).

    options = job_options(argv)                       # in run(argv)
    prepare_output(cfg.output, cfg.overwrite)
    p = new_pipeline(options)                         # pipeline/runners/local.py
    ... write_tail(cfg.output, rejects=..., written=..., ...)
    p.run().wait_until_finish()
    return finish(cfg.output)                          # Stats, checked; report written
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from pipeline.accounting.dashboards import report_funnel, report_targets
from pipeline.accounting.gallery import Gallery, GalleryConfig
from pipeline.accounting.progress import ProgressMonitor
from pipeline.accounting.report import write_report
from pipeline.accounting.stats import WriteStats
from pipeline.curation.decontaminate import refusal
from pipeline.io.layout import OUTPUT_NAMES, REJECTS_DIR, STATS_NAME, join_path
from pipeline.io.shards import WriteManifest
from pipeline.io.url_lists import InputError
from pipeline.results import parquet_schema
from pipeline.runners.cluster import dask_cluster, resolve_runner, uses_dask
from schemas import Stats, StatsMismatchError, Status

logger = logging.getLogger(__name__)


# Runners whose job servers take options this process does not know about.
_PORTABLE_RUNNERS = ("flinkrunner", "sparkrunner", "portablerunner", "prismrunner", "samzarunner")


def check_flags(argv: list[str], options: PipelineOptions) -> None:
    """Unknown flags are an error (Beam would only log and drop them), except where a
    portable runner's job server is the one that reads them."""
    from apache_beam.options.pipeline_options import (
        _BeamArgumentParser,
    )  # the parser Beam itself uses

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    runner = str(options.view_as(StandardOptions).runner or "").lower()
    flags = [a for a in unknown if a.startswith("-")]
    if flags and runner not in _PORTABLE_RUNNERS:
        raise InputError(f"unrecognized arguments: {' '.join(flags)}")


def summary_line(stats: Stats) -> str:
    parts = [f"input {stats.input}", f"written {stats.written} in {stats.shards} shards"]
    for status in (Status.FAILED, Status.FILTERED, Status.DUPLICATE, Status.INVALID):
        reasons = getattr(stats, status)
        if reasons:
            detail = ", ".join(
                f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])
            )
            parts.append(f"{status} {sum(reasons.values())} ({detail})")
    if stats.warnings:
        detail = ", ".join(f"{r} {n}" for r, n in sorted(stats.warnings.items()))
        parts.append(f"warnings {sum(stats.warnings.values())} ({detail})")
    return "; ".join(parts)


def job_main(argv: list[str] | None, prog: str, help_text, run_job) -> int:
    """The command-line shell every Beam job here shares: --help, logging, one-line errors
    (exit 2 for bad input, 1 when the counts do not add up) and the job's summary line.
    `help_text(prog)` -> str; `run_job(argv)` -> the summary line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(help_text(prog))
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        for noisy in ("apache_beam", "distributed"):  # their INFO lines drown ours
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        line = run_job(argv)
    except (InputError, ValueError) as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except StatsMismatchError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 1
    except SystemExit as e:  # argparse inside Beam on a malformed flag value
        return int(e.code or 2)
    sys.stdout.write(line + "\n")
    return 0


class MonitorOptions(PipelineOptions):
    """What every job shows while it runs and reports when it ends."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("progress and dashboards")
        g.add_argument(
            "--progress-every",
            dest="progress_every",
            type=float,
            default=None,
            metavar="SECONDS",
            help="a progress line (rows done, rows/s, failures, ETA) this often; default: 1 s "
            "on a terminal (one line, rewritten), 30 s otherwise (logged); 0: none",
        )
        g.add_argument(
            "--report-to",
            dest="report_to",
            default=None,
            metavar="tensorboard,wandb",
            help="the funnel (stats.json) also to OUTPUT/tensorboard/ and/or wandb at the end",
        )
        g.add_argument(
            "--wandb-project-name",
            dest="wandb_project_name",
            default="webpairs",
            metavar="PROJECT",
        )


class JobOptions(PipelineOptions):
    """A job's PipelineOptions, whose view of each options class is made once.

    Beam asks the pipeline's options for a view at every step it applies (TypeOptions, for
    the type check; about 1000 times for the curate job). Each view builds an argparse parser
    and parses the flags again: about half of the graph's construction time
    (bench/build_costs.py --plain-options). Views share the one store of values (`_all_options`), so the
    view made first is the view made again; Beam's own `view_as` makes it, and nothing is kept
    across pickling.
    """

    def view_as(self, cls):
        views = self.__dict__.setdefault("_views", {})  # past PipelineOptions.__setattr__
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_views", None)
        return state


def job_options(argv: list[str]) -> JobOptions:
    """The job's Beam options: unknown flags refused, DirectRunner unless a runner is given,
    `--runner dask` resolved (pipeline/runners/cluster.py)."""
    options = JobOptions(argv)
    resolve_runner(options, argv)
    check_flags(argv, options)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    report_targets(options.view_as(MonitorOptions).report_to)  # an unknown one fails now
    return options


def existing_outputs(out: str) -> list[str]:
    """The paths of `out` that a run writes and that exist already."""
    return [join_path(out, n) for n in OUTPUT_NAMES if FileSystems.exists(join_path(out, n))]


def prepare_output(out: str, overwrite: bool, holds: str = "a dataset") -> None:
    """Refuse to clobber an output unless `overwrite`; then clear what a run writes."""
    leftovers = existing_outputs(out)
    if leftovers and not overwrite:
        raise InputError(f"--output {out} already holds {holds}; pass --overwrite to replace it")
    clear(leftovers)


def clear(paths: list[str]) -> None:
    if paths:
        logger.info("removing %s", ", ".join(paths))
        FileSystems.delete(paths)


def gallery_config(output: str, recipe) -> GalleryConfig:
    """The audit gallery of a job running `recipe`: it shows decontamination's matches from
    the recipe's evaluation set."""
    source = recipe.decontaminate.source if "decontaminate" in recipe.stages else None
    return GalleryConfig(output, eval_source=source)


def write_tail(
    output: str,
    *,
    written: dict,
    rejects,
    results,
    input_count,
    extra_fields: tuple,
    options_record: dict,
    source: str | None,
    scorer: dict | None,
    gallery: GalleryConfig,
    gallery_rows: dict,
    fetch_images: beam.PTransform | None = None,
    warnings=None,
) -> None:
    """What every job writes beside its shards: rejects/*.parquet (every row not written, with
    its reason), manifest.json (naming the source and scorer), stats.json (the funnel) and the
    audit gallery (OUTPUT/report/): `gallery_rows` are Gallery's inputs ("rejected",
    "removed", "kept", "images"; `fetch_images` reads the bytes when "images" has none)."""
    _ = rejects | "WriteRejects" >> beam.io.WriteToParquet(
        join_path(output, REJECTS_DIR, "rejects"),
        parquet_schema(extra_fields),
        file_name_suffix=".parquet",
    )
    _ = written["shards"] | "WriteManifest" >> WriteManifest(
        output, options_record, source=source, scorer=scorer
    )
    stats_inputs = {
        "results": results,
        "written": written["rows"],
        "input_count": input_count,
        "shards": written["shards"],
    }
    if warnings is not None:  # counted, outside the accounting identity (a bad KEY.json)
        stats_inputs["warnings"] = warnings
    _ = stats_inputs | "WriteStats" >> WriteStats(output)
    _ = gallery_rows | "Gallery" >> Gallery(gallery, fetch_images)


def run_pipeline(
    p: beam.Pipeline, output: str, prog: str = "webpairs", total: int | None = None
) -> PipelineResult:
    """Runs the job to its end (on its dask cluster, with `--runner dask`), showing its
    progress (accounting/progress.py). A refusal the pipeline recorded in OUTPUT (an
    evaluation set too unreadable to protect) becomes one error line, whichever runner
    raised what."""
    every = p.options.view_as(MonitorOptions).progress_every
    try:
        cluster = dask_cluster(p.options, output) if uses_dask(p.options) else nullcontext()
        with cluster, ProgressMonitor(output, prog, every, total):
            result = p.run()
            result.wait_until_finish()
        return result
    except InputError:
        raise
    except Exception:
        refused = refusal(output)
        if refused is None:
            raise
        raise InputError(refused) from None


def finish(output: str, options: PipelineOptions | None = None) -> Stats:
    """After the pipeline ran: the funnel read back and checked (a lost or doubly counted row
    fails the job), report.html written, and the funnel sent to --report-to's dashboards."""
    with FileSystems.open(join_path(output, STATS_NAME)) as f:
        stats = Stats.from_json(f.read().decode("utf-8"))
    stats.check()
    write_report(output)
    if options is not None:
        monitor = options.view_as(MonitorOptions)
        targets = report_targets(monitor.report_to)
        report_funnel(output, stats, targets, monitor.wandb_project_name)
    return stats
