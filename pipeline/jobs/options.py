"""Command-line options of `webpairs curate`, as a Beam `PipelineOptions` subclass, and the
typed configuration they become (`config_from_options`).

Every Beam flag (`--runner`, `--direct_num_workers`, `--direct_running_mode`, Dataflow's
`--project/--region/--temp_location/--sdk_container_image`, ...) passes straight through.

    opts = PipelineOptions(argv).view_as(CurateOptions)
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.crawl.download import (
    DEFAULT_DISALLOWED,
    DEFAULT_USER_AGENT,
    DownloadConfig,
    load_domain_list,
)
from pipeline.crawl.images import ENCODE_FORMATS, RESIZE_MODES, ImageConfig
from pipeline.curation.recipe import Recipe, load_recipe, with_overrides
from pipeline.io.previous import check_previous, rejects_input
from pipeline.io.shards import ShardConfig
from pipeline.io.url_lists import FORMATS, InputError, ReadConfig
from pipeline.runners.cluster import usable_cores


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


class CurateOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("input")
        g.add_argument(
            "--input",
            dest="input",
            help="URL list: path, glob or comma-separated list (gs://, s3:// too)",
        )
        g.add_argument(
            "--input-format",
            dest="input_format",
            choices=FORMATS,
            help="default: from the extension",
        )
        g.add_argument(
            "--url-col", dest="url_col", default="url", help="column holding the image URL"
        )
        g.add_argument(
            "--caption-col",
            dest="caption_col",
            default="caption",
            help="caption column ('' for none)",
        )
        g.add_argument(
            "--save-additional-columns",
            dest="save_additional_columns",
            type=_csv_list,
            default=(),
            help="comma-separated input columns copied into every result row",
        )
        g.add_argument("--max-url-length", dest="max_url_length", type=int, default=2048)

        g = parser.add_argument_group("output")
        g.add_argument("--output", dest="output", help="dataset folder (local, gs://, s3://)")
        g.add_argument(
            "--samples-per-shard",
            dest="samples_per_shard",
            type=int,
            default=10_000,
            help="rows to download per shard, as img2dataset's --number_sample_per_shard: the "
            "shard count is fixed before the crawl, so failed and removed rows leave shards "
            "smaller (default 10000)",
        )
        g.add_argument(
            "--bytes-per-shard",
            dest="bytes_per_shard",
            type=int,
            default=None,
            help="also cap shards by image bytes; the count then waits for the crawl's end "
            "and is sized from the rows written",
        )
        g.add_argument(
            "--overwrite",
            dest="overwrite",
            action="store_true",
            help="replace a finished run in --output",
        )
        g.add_argument(
            "--resume",
            dest="resume",
            action="store_true",
            help="continue an interrupted run: download only what its crawl log lacks",
        )
        g.add_argument(
            "--incremental",
            dest="incremental",
            default=None,
            help="a previous output: skip URLs it already holds",
        )
        g.add_argument(
            "--retry-failed",
            dest="retry_failed",
            default=None,
            help="a previous output: re-attempt only its transient failures (timeouts, dns, 429, 5xx)",
        )
        g.add_argument(
            "--keep-staging",
            dest="keep_staging",
            action="store_true",
            help="keep OUTPUT/_staging (the crawl log) after a successful run",
        )
        g.add_argument(
            "--no-staging",
            dest="staging",
            action="store_false",
            help="no crawl log: a little faster, but --resume must then start over",
        )
        g.add_argument(
            "--staging-flush-rows",
            dest="staging_flush_rows",
            type=int,
            default=1000,
            help="rows per crawl-log file (what a crash can cost, per worker)",
        )

        g = parser.add_argument_group("download")
        g.add_argument(
            "--threads", dest="threads", type=int, default=64, help="requests in flight per worker"
        )
        g.add_argument("--connect-timeout", dest="connect_timeout", type=float, default=10.0)
        g.add_argument("--read-timeout", dest="read_timeout", type=float, default=10.0)
        g.add_argument(
            "--timeout",
            dest="timeout",
            type=float,
            default=30.0,
            help="total deadline per attempt (s)",
        )
        g.add_argument("--retries", dest="retries", type=int, default=2)
        g.add_argument("--user-agent", dest="user_agent", default=DEFAULT_USER_AGENT)
        g.add_argument("--user-agent-token", dest="user_agent_token", default="webpairs")
        g.add_argument("--max-bytes", dest="max_bytes", type=int, default=32 * 1024 * 1024)
        g.add_argument("--max-redirects", dest="max_redirects", type=int, default=5)
        g.add_argument(
            "--disallowed-header-directives",
            dest="disallowed_header_directives",
            type=_csv_list,
            default=DEFAULT_DISALLOWED,
            help="X-Robots-Tag directives that opt an image out ('' to ignore the header)",
        )

        g = parser.add_argument_group("politeness and safety")
        g.add_argument(
            "--allow-private-networks",
            dest="allow_private_networks",
            action="store_true",
            help="crawl loopback/private/link-local addresses too (refused by default: SSRF guard)",
        )
        g.add_argument(
            "--allow-networks",
            dest="allow_networks",
            type=_csv_list,
            default=(),
            help="CIDRs exempt from the SSRF guard",
        )
        g.add_argument(
            "--per-host",
            dest="per_host",
            type=int,
            default=16,
            help="requests in flight per host per worker",
        )
        g.add_argument(
            "--host-interval",
            dest="host_interval",
            type=float,
            default=0.0,
            help="seconds between requests to a host",
        )
        g.add_argument(
            "--host-buckets",
            dest="host_buckets",
            type=int,
            default=8,
            help="workers a host's URLs spread over",
        )
        g.add_argument("--breaker-failures", dest="breaker_failures", type=int, default=20)
        g.add_argument(
            "--robots", dest="robots", action="store_true", help="honour robots.txt (RFC 9309)"
        )
        g.add_argument(
            "--opt-out-domains",
            dest="opt_out_domains",
            default=None,
            help="file of domains never to fetch",
        )
        g.add_argument("--dns-timeout", dest="dns_timeout", type=float, default=5.0)

        g = parser.add_argument_group("curation")
        g.add_argument(
            "--recipe",
            dest="recipe",
            default="default",
            help="preset name or JSON/YAML recipe file",
        )
        g.add_argument(
            "--stages",
            dest="stages",
            type=_csv_list,
            default=None,
            help="override the recipe's stage order, comma-separated",
        )
        g.add_argument("--near-dup-threshold", dest="near_dup_threshold", type=int, default=None)
        g.add_argument(
            "--languages",
            dest="languages",
            type=_csv_list,
            default=None,
            help="caption language allow-list (ISO 639-1)",
        )
        g.add_argument(
            "--blocklist", dest="blocklist", default=None, help="file of blocked caption terms"
        )
        g.add_argument(
            "--clean-captions",
            dest="clean_captions",
            action="store_true",
            help="fix entities, mojibake, spaces",
        )
        g.add_argument(
            "--decontaminate",
            dest="decontaminate",
            default=None,
            help="evaluation images: folder, tar glob or hash list",
        )
        g.add_argument(
            "--score-checkpoint",
            dest="score_checkpoint",
            default=None,
            help="trainer checkpoint or run folder: record every pair's CLIP score and embeddings",
        )
        g.add_argument(
            "--score-model",
            dest="score_model",
            default=None,
            help="score with an OpenCLIP architecture (ViT-B-32, ViT-L-14, RN50, "
            "NAME-quickgelu, a config .json) and the weights of --score-pretrained",
        )
        g.add_argument(
            "--score-pretrained",
            dest="score_pretrained",
            default=None,
            help="OpenCLIP / OpenAI weights of --score-model (.pt, .bin, .safetensors)",
        )

        g = parser.add_argument_group("images")
        g.add_argument(
            "--resize-mode", dest="resize_mode", choices=RESIZE_MODES, default="keep_ratio"
        )
        g.add_argument("--image-size", dest="image_size", type=int, default=256)
        g.add_argument("--resize-only-if-bigger", dest="resize_only_if_bigger", action="store_true")
        g.add_argument(
            "--encode-format",
            dest="encode_format",
            choices=tuple(ENCODE_FORMATS),
            default="jpg",
            help="image codec in the shards (img2dataset's --encode_format)",
        )
        # img2dataset's --output_format names the container (webdataset, parquet, files...):
        # refused with a pointer, never read as the codec (see config_from_options)
        g.add_argument("--output-format", dest="output_format", help=argparse.SUPPRESS)
        g.add_argument("--encode-quality", dest="encode_quality", type=int, default=95)
        g.add_argument("--max-pixels", dest="max_pixels", type=int, default=89_478_485)
        g.add_argument("--min-image-size", dest="min_image_size", type=int, default=0)
        g.add_argument(
            "--max-aspect-ratio",
            dest="max_aspect_ratio",
            type=float,
            default=None,
            help="default: no limit",
        )
        g.add_argument(
            "--decode-threads", dest="decode_threads", type=int, default=0, help="0: two per CPU"
        )
        g.add_argument(
            "--decode-processes",
            dest="decode_processes",
            type=int,
            default=None,
            help="decode in this many worker processes (img2dataset's --processes_count); "
            "0: in the pipeline worker's threads. Default: one per CPU on the in-process "
            "DirectRunner, 0 on runners that already run a process per core",
        )


@dataclass(frozen=True)
class CurateConfig:
    read: ReadConfig
    download: DownloadConfig
    image: ImageConfig
    shards: ShardConfig
    output: str
    recipe: Recipe = Recipe()
    staging: bool = True  # write the crawl log that --resume reads
    staging_flush_rows: int = 1000  # rows per crawl-log file: what a crash can cost, per worker
    incremental: str | None = None  # a previous output whose samples are not fetched again
    retry_failed: str | None = None  # a previous output whose transient failures are the input
    overwrite: bool = False
    resume: bool = False


def in_process_runner(options: PipelineOptions) -> bool:
    """True when every stage runs in this one process (DirectRunner in_memory or
    multi_threading): one GIL for the whole job."""
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    if name not in (None, "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"):
        return False
    return options.view_as(DirectOptions).direct_running_mode != "multi_processing"


def decode_processes(opts: PipelineOptions) -> int:
    """--decode-processes, or its default: every core this process may use when the job runs
    in this process."""
    n = opts.view_as(CurateOptions).decode_processes
    if n is None:
        return usable_cores() if in_process_runner(opts) else 0
    if n < 0:
        raise InputError(f"--decode-processes must be 0 or more, got {n}")
    return n


def config_from_options(opts: CurateOptions) -> CurateConfig:
    if opts.output_format is not None:
        hint = (
            f"the image codec is --encode-format {opts.output_format}"
            if opts.output_format in ENCODE_FORMATS
            else "webpairs always writes WebDataset shards; the image codec is --encode-format"
        )
        raise InputError(
            f"--output-format is img2dataset's container flag, not ours: {hint} "
            "(docs/from-img2dataset.md)"
        )
    if opts.retry_failed:
        if opts.input:
            raise InputError(
                "--retry-failed reads its input from the previous output; drop --input"
            )
        check_previous(opts.retry_failed, "--retry-failed")
        opts.input, opts.input_format = rejects_input(opts.retry_failed)[0], "parquet"
        opts.url_col, opts.caption_col = "url", "caption"
        opts.save_additional_columns = rejects_input(opts.retry_failed)[1]
    if opts.incremental:
        check_previous(opts.incremental, "--incremental")
    if not opts.input:
        raise InputError("--input is required")
    if not opts.output:
        raise InputError("--output is required")
    for flag, value in (
        ("--threads", opts.threads),
        ("--image-size", opts.image_size),
        ("--samples-per-shard", opts.samples_per_shard),
    ):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    if not 0 <= opts.encode_quality <= 100:
        raise InputError(f"--encode-quality must be in 0..100, got {opts.encode_quality}")
    read = ReadConfig(
        input=opts.input,
        input_format=opts.input_format,
        url_col=opts.url_col,
        caption_col=opts.caption_col or None,
        extra_cols=tuple(opts.save_additional_columns),
        max_url_length=opts.max_url_length,
        retry_failed=bool(opts.retry_failed),
    )
    download = DownloadConfig(
        threads=opts.threads,
        connect_timeout=opts.connect_timeout,
        read_timeout=opts.read_timeout,
        deadline=opts.timeout,
        retries=opts.retries,
        user_agent=opts.user_agent,
        user_agent_token=opts.user_agent_token,
        max_bytes=opts.max_bytes,
        max_redirects=opts.max_redirects,
        disallowed_directives=tuple(opts.disallowed_header_directives),
        allow_private_networks=opts.allow_private_networks,
        allow_networks=tuple(opts.allow_networks),
        per_host=opts.per_host,
        host_interval=opts.host_interval,
        host_buckets=opts.host_buckets,
        breaker_failures=opts.breaker_failures,
        robots=opts.robots,
        opt_out_domains=load_domain_list(opts.opt_out_domains),
        dns_timeout=opts.dns_timeout,
    )
    image = ImageConfig(
        image_size=opts.image_size,
        resize_mode=opts.resize_mode,
        resize_only_if_bigger=opts.resize_only_if_bigger,
        encode_format=opts.encode_format,
        encode_quality=opts.encode_quality,
        max_pixels=opts.max_pixels,
        min_image_size=opts.min_image_size,
        max_aspect_ratio=opts.max_aspect_ratio or math.inf,
        threads=opts.decode_threads,
        processes=decode_processes(opts),
    )
    shards = ShardConfig(
        output=opts.output,
        samples_per_shard=opts.samples_per_shard,
        bytes_per_shard=opts.bytes_per_shard,
    )
    recipe = with_overrides(
        load_recipe(opts.recipe),
        stages=opts.stages,
        near_dup_threshold=opts.near_dup_threshold,
        languages=opts.languages,
        blocklist=opts.blocklist,
        clean_captions=opts.clean_captions,
        decontaminate=opts.decontaminate,
        score_checkpoint=opts.score_checkpoint,
        score_model=opts.score_model,
        score_pretrained=opts.score_pretrained,
    )
    return CurateConfig(
        read=read,
        download=download,
        image=image,
        shards=shards,
        output=opts.output,
        recipe=recipe,
        staging=opts.staging,
        staging_flush_rows=opts.staging_flush_rows,
        incremental=opts.incremental,
        retry_failed=opts.retry_failed,
        overwrite=opts.overwrite,
        resume=opts.resume,
    )
