"""The DecodeResize stage: downloaded rows -> rows with their encoded image, in threads of the
pipeline worker or in worker processes (pipeline/crawl/images.py does the work).

    images = fetched | "DecodeResize" >> DecodeResize(ImageConfig(image_size=256, processes=2))
"""

from __future__ import annotations

import os
from functools import partial

import apache_beam as beam

from pipeline.crawl.concurrency import ProcessBatchFn, ThreadedMapFn
from pipeline.crawl.images import ImageConfig, decode_row, decode_rows
from schemas import Status


def _not_ok(row: dict) -> bool:
    return row["status"] != Status.OK


def _downloaded_bytes(row: dict) -> int:
    return len(row.get("_data") or b"")


class DecodeResize(beam.PTransform):
    """Downloaded rows -> rows with encoded images; failures pass through untouched.

    With `cfg.processes`, batches of rows are decoded in that many worker processes (the
    in-process DirectRunner's default: its stages share one GIL, and Pillow's encoder holds
    it), else in `cfg.threads` threads of the pipeline worker."""

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, rows):
        if self.cfg.processes:
            fn = ProcessBatchFn(
                partial(decode_rows, cfg=self.cfg),
                self.cfg.processes,
                stage="decode",
                bypass=_not_ok,
                weigh=_downloaded_bytes,
            )
            return rows | "Decode" >> beam.ParDo(fn)
        threads = self.cfg.threads or 2 * (os.cpu_count() or 1)
        fn = ThreadedMapFn(
            partial(decode_row, cfg=self.cfg), threads, stage="decode", bypass=_not_ok
        )
        return rows | "Decode" >> beam.ParDo(fn)
