"""Exact image deduplication: rows with the same decoded pixels, one survivor each."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import apache_beam as beam

from pipeline.curation.decisions import CountRemoved, DropRemoved, image_survivor_order
from pipeline.results import decision
from schemas import Reason, Status

log = logging.getLogger(__name__)


def exact_duplicate_decisions(rows: Iterable[dict]) -> Iterator[dict]:
    """Rows sharing decoded pixels -> a decision for every row but the best.

    Two passes over `rows` (a re-iterable Beam group), so a placeholder image repeated a
    million times is never held as a list.
    """
    best = min(rows, key=image_survivor_order)
    for row in rows:
        if row["key"] != best["key"]:
            same_bytes = row.get("sha256") is not None and row.get("sha256") == best.get("sha256")
            detail = "identical bytes" if same_bytes else "identical decoded pixels"
            yield decision(
                row["key"], Status.DUPLICATE, Reason.DUPLICATE_IMAGE, best["key"], detail
            )


@dataclass(frozen=True)
class ExactDedupeConfig:
    captions: str = (
        "keep_best"  # keep_best: one pair per image; keep_all: one pair per (image, caption)
    )


class ExactDedupe(beam.PTransform):
    """Same decoded pixels (re-encoded losslessly, or the same file under another URL) -> one survivor."""

    def __init__(self, cfg: ExactDedupeConfig = ExactDedupeConfig()):
        super().__init__()
        self.cfg = cfg

    def expand(self, light):
        by_caption = self.cfg.captions == "keep_all"
        removed = (
            light
            | "KeyByPixels"
            >> beam.Map(lambda r: ((r["pixel_hash"], r["caption"] if by_caption else None), r))
            | "GroupByPixels" >> beam.GroupByKey()
            | "Decide" >> beam.FlatMap(lambda kv: exact_duplicate_decisions(kv[1]))
        )
        removed = removed | "Count" >> CountRemoved("exact_dedupe")
        kept = {"light": light, "removed": removed} | "DropRemoved" >> DropRemoved()
        return {"kept": kept, "removed": removed}
