"""The one filter base (pipeline/curation/base.py) and the per-stage removal counters: every
removal is a decision on "removed" and a Beam counter named by its reason."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.curation.base import KeepRows, RowFilter
from pipeline.curation.dedupe.captions import CaptionDedupe
from pipeline.curation.dedupe.exact import ExactDedupe
from pipeline.curation.dedupe.near import NearDedupe
from tests.pipeline.test_dedupe import counter


class ShortCaptions(RowFilter):
    namespace = "test_filter"

    def setup(self):
        self.limit = 3  # built on the worker, as a compiled pattern would be

    def keep(self, row, bonus=0):
        n = len(row["caption"].split())
        if n + bonus >= self.limit:
            return True, None, None
        return False, "too_few_words" if n else "no_words", f"{n} words"


def test_keep_rows_counts_each_reason_and_records_decisions():
    rows = [{"key": f"k{i}", "caption": " ".join(["w"] * i)} for i in range(5)]
    p = test_pipeline.TestPipeline()
    bonus = p | "Bonus" >> beam.Create([1])
    out = p | beam.Create(rows) | KeepRows(ShortCaptions(), bonus=beam.pvalue.AsSingleton(bonus))
    assert_that(
        out["kept"] | "KeptKeys" >> beam.Map(lambda r: r["key"]),
        equal_to(["k2", "k3", "k4"]),
        label="Kept",
    )
    assert_that(
        out["removed"] | beam.Map(lambda d: (d["key"], d["status"], d["reason"], d["error"])),
        equal_to(
            [
                ("k0", "filtered", "no_words", "0 words"),
                ("k1", "filtered", "too_few_words", "1 words"),
            ]
        ),
        label="Removed",
    )
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "test_filter", "no_words") == 1
    assert counter(result, "test_filter", "too_few_words") == 1


def _light(key, pixel_hash, phash, caption, width):
    return {
        "key": key,
        "pixel_hash": pixel_hash,
        "phash": phash,
        "dhash": phash,
        "caption": caption,
        "original_width": width,
        "original_height": 10,
    }


def test_dedupe_stages_count_their_removals_as_beam_counters():
    rows = [
        _light("a", "p1", "0f0f0f0f0f0f0f0f", "a red car parked by the sea", 20),
        _light("b", "p1", "0f0f0f0f0f0f0f0f", "another caption entirely here", 10),  # same pixels
        _light(
            "c", "p2", "0f0f0f0f0f0f0f0e", "a red car parked by the sea", 15
        ),  # near a, same caption
        _light("d", "p3", "f0f0f0f0f0f0f0f0", "a cat", 30),
    ]
    p = test_pipeline.TestPipeline()
    light = p | beam.Create(rows)
    _ = light | "Exact" >> ExactDedupe()
    _ = light | "Near" >> NearDedupe()
    _ = light | "Captions" >> CaptionDedupe()
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "exact_dedupe", "duplicate_image") == 1
    assert counter(result, "near_dedupe", "near_duplicate") == 2  # b and c (b: identical hashes)
    assert counter(result, "caption_dedupe", "duplicate_caption") == 1
