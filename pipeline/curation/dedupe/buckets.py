"""Comparing the rows that met in an LSH bucket, in bounded memory: shared by near-duplicate
image dedupe (pHash buckets) and caption dedupe (MinHash bands).

    rows | ... | "GroupByBucket" >> beam.GroupByKey()
         | "Compare" >> beam.ParDo(CompareBucketFn(near_duplicate_pairs, 12, 4096, "near_dedupe", "phash"))
"""

from __future__ import annotations

import logging
from operator import attrgetter

import apache_beam as beam
from apache_beam.metrics import Metrics

log = logging.getLogger(__name__)


# the output type declared: Beam would infer it from the bytecode at every build
@beam.typehints.with_output_types(
    beam.typehints.Tuple[
        beam.typehints.Any, beam.typehints.Tuple[beam.typehints.Any, beam.typehints.Any]
    ]
)
class CompareBucketFn(beam.DoFn):
    """(bucket, items) -> (loser, (survivor order, survivor)) from `pairs_fn(items, threshold)`;
    items are named tuples sorted by their field `sort_by` (the hash they were bucketed by).

    Items are read as a stream into windows of at most `window` items, each sorted by hash and
    compared in chunks of `max_bucket`, so a bucket of any size costs bounded memory. A bucket
    over `max_bucket` items loses the pairs that fall in different chunks (lost recall): such
    buckets and their items are counted and the first one of each bundle is logged. With
    NearDedupe's row-count-sized keys this only happens to skewed hashes (placeholders)."""

    def __init__(
        self, pairs_fn, threshold, max_bucket: int, stage: str, sort_by: str, window: int = 0
    ):
        self.pairs_fn, self.threshold, self.max_bucket = pairs_fn, threshold, max_bucket
        self.stage, self.sort_by = stage, sort_by
        self.window = window or 16 * max_bucket
        self.oversized = Metrics.counter(stage, "oversized_buckets")
        self.oversized_rows = Metrics.counter(stage, "oversized_bucket_rows")

    def start_bundle(self):
        self._warned = False

    def _windows(self, items):
        buf = []
        for it in items:
            buf.append(it)
            if len(buf) == self.window:
                yield buf
                buf = []
        if buf:
            yield buf

    def process(self, element):
        bucket, items = element
        size = 0
        for window in self._windows(items):
            size += len(window)
            window.sort(key=attrgetter(self.sort_by))  # chunks of a huge bucket stay local
            for start in range(0, len(window), self.max_bucket):
                for loser, survivor, order in self.pairs_fn(
                    window[start : start + self.max_bucket], self.threshold
                ):
                    yield loser, (order, survivor)
        if size > self.max_bucket:
            self.oversized.inc()
            self.oversized_rows.inc(size)
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s: bucket %r holds %d items > max_bucket %d: compared in %d chunks, pairs "
                    "across chunks are missed (counter oversized_bucket_rows; first this bundle)",
                    self.stage,
                    bucket,
                    size,
                    self.max_bucket,
                    -(-size // self.max_bucket),
                )
