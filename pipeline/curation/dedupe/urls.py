"""URL deduplication: one row per normalized URL, the others recorded as duplicates of it.

unique = pairs | "DedupeUrls" >> DedupeUrls()
unique["unique"], unique["duplicates"]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.results import result_row
from schemas import Reason, Status

log = logging.getLogger(__name__)


def survivor_order(pair: dict) -> tuple:
    """Total order on pairs sharing a URL: the smallest survives, whatever the input order."""
    return (
        pair.get("caption") is None,  # prefer a pair that has a caption
        pair.get("caption") or "",
        pair.get("url") or "",
        json.dumps(pair.get("extra") or {}, sort_keys=True, default=str),
    )


def pick_survivor(pairs: Iterable[dict]) -> Iterator[tuple[bool, dict]]:
    """One streamed pass over pairs sharing a URL: yields (False, loser) for each duplicate,
    then (True, survivor). A URL repeated a million times never sits in memory as a list."""
    it = iter(pairs)
    best = next(it)
    best_order = survivor_order(best)
    for pair in it:
        order = survivor_order(pair)
        if order < best_order:
            yield False, best
            best, best_order = pair, order
        else:
            yield False, pair
    yield True, best


# the output type declared: Beam would infer it from the bytecode at every build
@beam.typehints.with_output_types(beam.typehints.Any)
class _PickSurvivorFn(beam.DoFn):
    """(nurl, pairs) -> survivor on the main output, the rest as duplicate result rows."""

    def __init__(self):
        self.duplicates = Metrics.counter("dedupe_urls", "duplicates")

    def process(self, element):
        _, pairs = element
        for survives, pair in pick_survivor(pairs):
            if survives:
                yield pair
            else:
                self.duplicates.inc()
                # Pairs sharing a normalized URL share its key, so the survivor's key is pair["key"].
                yield beam.pvalue.TaggedOutput(
                    "duplicates",
                    result_row(
                        pair,
                        Status.DUPLICATE,
                        reason=Reason.DUPLICATE_URL,
                        duplicate_of=pair["key"],
                    ),
                )


class DedupeUrls(beam.PTransform):
    """Exact-duplicate normalized URLs -> one deterministic survivor (a Beam aggregation)."""

    def expand(self, pairs):
        out = (
            pairs
            | "KeyByUrl" >> beam.Map(lambda p: (p["nurl"], p))
            | "GroupByUrl" >> beam.GroupByKey()
            | "PickSurvivor"
            >> beam.ParDo(_PickSurvivorFn()).with_outputs("duplicates", main="unique")
        )
        return {"unique": out.unique, "duplicates": out.duplicates}
