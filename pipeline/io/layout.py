"""The layout of an OUTPUT folder: every file and folder name, once, and path joining that
needs no filesystem plugin.

    join_path(output, SHARDS_DIR, "00000.tar")
"""

from __future__ import annotations

import os

SHARDS_DIR = "shards"  # shards/00000.tar, shards/00000.parquet
MANIFEST_NAME = "manifest.json"
SIZES_NAME = "sizes.json"  # beside the tars: {"00000.tar": samples}, as OpenCLIP counts shards
STATS_NAME = "stats.json"
REPORT_NAME = "report.html"
REPORT_DIR = (
    "report"  # beside report.html: the audit gallery's thumbnails (report/thumbs/, report/eval/)
)
GALLERY_NAME = f"{REPORT_DIR}/gallery.json"  # the gallery's sampled rows, which report.html shows
REJECTS_DIR = "rejects"  # rejects/*.parquet: every row not written, with its reason
FOUND_NAME = "decontamination.json"
STAGING_DIR = "_staging"  # the crawl log of --resume
PROGRESS_DIR = (
    "_progress"  # while a job runs: each worker's running counts (accounting/progress.py)
)
TENSORBOARD_DIR = "tensorboard"  # --report-to tensorboard: the funnel as scalars
WANDB_DIR = "wandb"  # --report-to wandb: the run's local files
# everything a run writes into OUTPUT (what --overwrite clears)
OUTPUT_NAMES = (
    SHARDS_DIR,
    REJECTS_DIR,
    STATS_NAME,
    MANIFEST_NAME,
    REPORT_NAME,
    REPORT_DIR,
    FOUND_NAME,
    STAGING_DIR,
    PROGRESS_DIR,
    TENSORBOARD_DIR,
    WANDB_DIR,
)


def join_path(base: str, *parts: str) -> str:
    """`base/part/...`: '/'-joined for URLs (scheme://...), `os.path.join` for local paths."""
    if "://" in base:
        tail = "/".join(p.strip("/") for p in parts if p)
        return base.rstrip("/") + "/" + tail if tail else base
    return os.path.join(base, *parts)
