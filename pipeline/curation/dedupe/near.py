"""Near-duplicate image deduplication: 64-bit pHash candidates from LSH key tables, checked
by dHash, connected groups per bucket, one survivor each."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from pipeline.curation.decisions import (
    CountRemoved,
    DropRemoved,
    ResolveChains,
    cluster_losers,
    image_survivor_order,
)
from pipeline.curation.dedupe.buckets import CompareBucketFn
from pipeline.curation.lsh import candidate_tables, contiguous_bands, table_keys, table_recall
from pipeline.results import decision
from schemas import Reason, Status
from schemas.imagehash import hamming_matrix, hamming_matrix_ints

log = logging.getLogger(__name__)


class NearItem(NamedTuple):
    """A row as near dedupe compares it."""

    key: str
    phash: str  # 64-bit DCT pHash, hex: bucket keys come from it, buckets are sorted by it
    dhash: str | None  # 64-bit dHash, hex; None in outputs written before dhash existed
    order: tuple  # image_survivor_order: the smallest survives


def near_duplicate_pairs(
    items: list[NearItem], threshold: int | tuple[int, int | None]
) -> list[tuple[str, str, tuple]]:
    """Items of one LSH bucket -> (loser, survivor key, survivor order). `threshold` is the pHash limit, or (pHash limit, dHash limit):
    pairs within both are joined (a dHash missing on either side is not held against the pair);
    each connected group keeps its best item."""
    if len(items) < 2:
        return []
    t, t2 = threshold if isinstance(threshold, tuple) else (threshold, None)
    adjacent = hamming_matrix([it.phash for it in items]) <= t
    if t2 is not None:
        dhashes = [it.dhash for it in items]
        present = np.array([h is not None for h in dhashes], dtype=bool)
        ints = np.array([int(h, 16) if h else 0 for h in dhashes], dtype=np.uint64)
        close = hamming_matrix_ints(ints) <= t2
        close |= ~(present[:, None] & present[None, :])
        adjacent &= close
    return cluster_losers([it.key for it in items], [it.order for it in items], adjacent)


@dataclass(frozen=True)
class NearDedupeConfig:
    """Two rows are near duplicates when their 64-bit pHashes are within `threshold` bits and
    their dHashes within `verify_threshold` (None: pHash alone). Defaults chosen on real photos
    (`bench/near_hashes.py`, tested on others): every re-encoded / resized / brightness-shifted
    copy and nearly every crop of up to 2.5 % a side is found, a crop of 5 % a side about half
    the time; about 1 in 1,000 pairs of other framings of one photo (edges > 10 % apart) and no
    unrelated photo pair match. A pHash cannot tell a 5 % crop from a 10 % reframing: larger
    thresholds find more crops and merge more framings (bench/RESULTS-dedupe.md has the table).

    Candidates: rows with identical (pHash, dHash) collapse to one first (placeholder images
    become one row, not a hot bucket); the rest meet in buckets keyed by `pipeline.curation.lsh` tables
    sized from the row count, so buckets hold ~`target_bucket` rows at any scale (`bands` fixes
    contiguous bands instead). Compared pairs are exact; what scale costs is recall of pairs
    many bits apart (see `pipeline.curation.lsh.table_recall`, logged per run) and, for a given
    threshold, precision: unrelated real images fall within 12 bits far more often than random
    hashes do, so at 1e8+ rows use a lower threshold (README: "Near dedupe at scale")."""

    threshold: int = 10  # max Hamming distance between 64-bit pHashes
    verify_threshold: int | None = 12  # max Hamming distance between dHashes; None: not checked
    bands: int | None = (
        None  # None: tables sized by rows (pipeline.curation.lsh); an int: contiguous bands
    )
    target_bucket: int = 2048  # rows per bucket the key width aims at (auto tables)
    extra_tables: int = 8  # sampled-bit tables beyond the disjoint ones (auto tables, large runs)
    seed: int = 0  # of the sampled bit positions
    max_bucket: int = 4096  # larger buckets (skewed hashes) are compared in sorted chunks
    chain_rounds: int = 3  # pointer-jumping rounds that make duplicate_of name the survivor

    def __post_init__(self):
        def check(name, value, lo, hi=None, optional=False):
            if value is None and optional:
                return
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < lo
                or (hi is not None and value > hi)
            ):
                span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                none = " or null" if optional else ""
                raise ValueError(
                    f"near_dedupe {name} must be an integer {span}{none}, got {value!r}"
                )

        check("threshold", self.threshold, 0, 64)
        check("verify_threshold", self.verify_threshold, 0, 64, optional=True)
        check("bands", self.bands, 1, 64, optional=True)
        check("target_bucket", self.target_bucket, 1)
        check("extra_tables", self.extra_tables, 0, 256)
        check("max_bucket", self.max_bucket, 2)
        check("chain_rounds", self.chain_rounds, 1, 32)

    def tables(self, rows: int) -> tuple[tuple[int, ...], ...]:
        if self.bands is not None:
            return contiguous_bands(self.bands)
        return candidate_tables(
            self.threshold, rows, self.target_bucket, self.extra_tables, self.seed
        )


def _near_item(r: dict) -> NearItem:
    return NearItem(r["key"], r["phash"], r.get("dhash"), image_survivor_order(r))


def collapse_same_hashes(items: Iterable[NearItem]) -> Iterator[tuple[bool, tuple]]:
    """Items sharing (pHash, dHash) -> (True, the best) and (False, (loser key, best key)) for the
    rest. Two passes over the re-iterable group, never a list: a placeholder shown a million
    times costs one streamed group."""
    best = min(items, key=attrgetter("order"))
    yield True, best
    for it in items:
        if it.key != best.key:
            yield False, (it.key, best.key)


def _collapse_group(element) -> Iterator:
    """((pHash, dHash), items) -> the best item; a "same" decision for each of the others."""
    for is_best, x in collapse_same_hashes(element[1]):
        if is_best:
            yield x
        else:
            yield beam.pvalue.TaggedOutput(
                "same",
                decision(
                    x[0], Status.DUPLICATE, Reason.NEAR_DUPLICATE, x[1], "same phash and dhash"
                ),
            )


# the output type declared: Beam would infer it from the bytecode at every build
@beam.typehints.with_output_types(beam.typehints.Tuple[beam.typehints.Any, beam.typehints.Any])
class _CandidateKeysFn(beam.DoFn):
    """Item -> ((table, value), item) per key table; the tables depend on the row count, a side
    input, and are built once per worker and logged with the recall they give."""

    def __init__(self, cfg: NearDedupeConfig):
        self.cfg = cfg
        self._rows = None

    def process(self, item, rows):
        if self._rows != rows:
            self._rows, self._tables = rows, self.cfg.tables(rows)
            recall = {d: table_recall(self._tables, d, 2000) for d in (2, 4, 8, self.cfg.threshold)}
            log.info(
                "near_dedupe: %d rows -> %d key tables of %d bits; pairs d bits apart meet "
                "with chance %s",
                rows,
                len(self._tables),
                len(self._tables[-1]),
                ", ".join(f"d={d}: {r:.2f}" for d, r in recall.items()),
            )
        for key in table_keys(int(item[1], 16), self._tables):
            yield key, item


class NearDedupe(beam.PTransform):
    """Perceptual-hash near duplicates (resized, re-compressed, cropped, colour-shifted) -> one survivor."""

    def __init__(self, cfg: NearDedupeConfig = NearDedupeConfig()):
        super().__init__()
        self.cfg = cfg

    def expand(self, light):
        cfg = self.cfg
        detail = f"phash within {cfg.threshold} bits" + (
            f", dhash within {cfg.verify_threshold}" if cfg.verify_threshold is not None else ""
        )
        collapsed = (
            light
            | "Items" >> beam.FlatMap(lambda r: [_near_item(r)] if r.get("phash") else [])
            | "KeyByHashes" >> beam.Map(lambda it: ((it[1], it[2]), it))
            | "GroupByHashes" >> beam.GroupByKey()
            | "Collapse" >> beam.FlatMap(_collapse_group).with_outputs("same", main="best")
        )
        representatives, same = collapsed.best, collapsed.same
        rows = beam.pvalue.AsSingleton(
            representatives | "CountRows" >> beam.combiners.Count.Globally().without_defaults(),
            default_value=0,
        )
        near = (
            representatives
            | "CandidateKeys" >> beam.ParDo(_CandidateKeysFn(cfg), rows)
            | "GroupByKey" >> beam.GroupByKey()
            | "CompareInBucket"
            >> beam.ParDo(
                CompareBucketFn(
                    near_duplicate_pairs,
                    (cfg.threshold, cfg.verify_threshold),
                    cfg.max_bucket,
                    "near_dedupe",
                    sort_by="phash",
                )
            )
            | "BestPerLoser" >> beam.CombinePerKey(min)
            | "Decisions"
            >> beam.Map(
                lambda kv: decision(
                    kv[0], Status.DUPLICATE, Reason.NEAR_DUPLICATE, kv[1][1], detail
                )
            )
        )
        removed = (
            (same, near)
            | "AllNear" >> beam.Flatten()
            | "ResolveChains" >> ResolveChains(cfg.chain_rounds)
        )
        removed = removed | "Count" >> CountRemoved("near_dedupe")
        kept = {"light": light, "removed": removed} | "DropRemoved" >> DropRemoved()
        return {"kept": kept, "removed": removed}
