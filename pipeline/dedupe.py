"""Deduplication stages. Every removed row is recorded with the survivor's key.

unique = pairs | "DedupeUrls" >> DedupeUrls()
unique["unique"], unique["duplicates"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.results import decision, result_row
from schemas import Reason, Status
from schemas.imagehash import hamming_matrix, phash_bands


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


# ---------------------------------------------------------------------------------------------
# Image dedupe. Stages take light rows (result rows without image bytes) and return
# {"kept": light rows, "removed": decisions}; the bytes only meet the decisions when shards
# are written, so no image is shuffled for deduplication.


def image_survivor_order(row: dict) -> tuple:
    """Best copy first: most original pixels, then a caption with more words, then the key."""
    pixels = (row.get("original_width") or 0) * (row.get("original_height") or 0)
    words = len((row.get("caption") or "").split())
    return (-pixels, -min(words, 32), row["key"])


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


def cluster_losers(
    keys: list[str], orders: list[tuple], adjacent: np.ndarray
) -> list[tuple[str, str, tuple]]:
    """Union-find over the pairs marked in `adjacent` (n, n) -> (loser, survivor key, survivor
    order) for every item that is not the best (smallest order) of its connected group."""
    n = len(keys)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rows, cols = np.nonzero(np.triu(adjacent, k=1))
    for i, j in zip(rows.tolist(), cols.tolist()):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
    best: dict[int, int] = {}
    for i in range(n):
        r = find(i)
        if r not in best or orders[i] < orders[best[r]]:
            best[r] = i
    out = []
    for i in range(n):
        b = best[find(i)]
        if b != i:
            out.append((keys[i], keys[b], orders[b]))
    return out


def near_duplicate_pairs(
    items: list[tuple[str, str, tuple]], threshold: int
) -> list[tuple[str, str, tuple]]:
    """Items (key, phash, order) of one LSH bucket -> (loser, survivor key, survivor order):
    pairs within `threshold` bits are joined; each connected group keeps its best item."""
    if len(items) < 2:
        return []
    adjacent = hamming_matrix([h for _, h, _ in items]) <= threshold
    return cluster_losers([k for k, _, _ in items], [o for _, _, o in items], adjacent)


class _CompareBucketFn(beam.DoFn):
    """(bucket, items) -> (loser, (survivor order, survivor)) from `pairs_fn(items, threshold)`."""

    def __init__(self, pairs_fn, threshold, max_bucket: int, stage: str):
        self.pairs_fn, self.threshold, self.max_bucket = pairs_fn, threshold, max_bucket
        self.oversized = Metrics.counter(stage, "oversized_buckets")

    def process(self, element):
        _, items = element
        items = sorted(items, key=lambda it: it[1])  # by hash: chunks of a huge bucket stay local
        if len(items) > self.max_bucket:
            self.oversized.inc()
        for start in range(0, len(items), self.max_bucket):
            for loser, survivor, order in self.pairs_fn(
                items[start : start + self.max_bucket], self.threshold
            ):
                yield loser, (order, survivor)


def _follow_once(element):
    """Pointer jumping. (K, {"in": decisions naming K as survivor, "out": K's own target})."""
    key, groups = element
    outs = list(groups["out"])
    for d in groups["in"]:
        if outs and outs[0] != d["key"]:
            d = {**d, "duplicate_of": outs[0]}
        yield d


class ResolveChains(beam.PTransform):
    """Decisions whose `duplicate_of` may itself have been removed as a duplicate -> decisions
    naming the final survivor (each round halves the longest chain; 3 rounds follow 8 links).
    Decisions without `duplicate_of` pass through."""

    def __init__(self, rounds: int = 3):
        super().__init__()
        self.rounds = rounds

    def expand(self, decisions):
        for r in range(self.rounds):
            ins = decisions | f"ByTarget{r}" >> beam.Map(lambda d: (d["duplicate_of"] or "", d))
            outs = (
                decisions
                | f"OnlyDuplicates{r}" >> beam.Filter(lambda d: d["duplicate_of"] is not None)
                | f"ByLoser{r}" >> beam.Map(lambda d: (d["key"], d["duplicate_of"]))
            )
            decisions = (
                {"in": ins, "out": outs}
                | f"Join{r}" >> beam.CoGroupByKey()
                | f"Follow{r}" >> beam.FlatMap(_follow_once)
            )
        return decisions


class _DropRemovedFn(beam.DoFn):
    def process(self, element):
        _, groups = element
        if not list(groups["removed"]):
            yield from groups["light"]


class DropRemoved(beam.PTransform):
    """{"light": rows, "removed": decisions} -> the rows without a decision (a join by key)."""

    def expand(self, pcolls):
        return (
            {
                "light": pcolls["light"] | "KeyLight" >> beam.Map(lambda r: (r["key"], r)),
                "removed": pcolls["removed"] | "KeyRemoved" >> beam.Map(lambda d: (d["key"], 1)),
            }
            | "JoinByKey" >> beam.CoGroupByKey()
            | "KeepUnremoved" >> beam.ParDo(_DropRemovedFn())
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
        kept = {"light": light, "removed": removed} | "DropRemoved" >> DropRemoved()
        return {"kept": kept, "removed": removed}


@dataclass(frozen=True)
class NearDedupeConfig:
    threshold: int = (
        12  # max Hamming distance between 64-bit phashes (chosen on the planted set, see tests)
    )
    bands: int = 13  # LSH bands; pairs within bands-1 bits always share a band (pigeonhole)
    max_bucket: int = 4096  # larger buckets are compared in sorted chunks of this size
    chain_rounds: int = 3  # pointer-jumping rounds that make duplicate_of name the survivor


class NearDedupe(beam.PTransform):
    """Perceptual-hash near duplicates (resized, re-compressed, cropped, colour-shifted) -> one survivor."""

    def __init__(self, cfg: NearDedupeConfig = NearDedupeConfig()):
        super().__init__()
        self.cfg = cfg

    def expand(self, light):
        cfg = self.cfg
        proposals = (
            light
            | "Bands"
            >> beam.FlatMap(
                lambda r: [
                    ((b, v), (r["key"], r["phash"], image_survivor_order(r)))
                    for b, v in phash_bands(r["phash"], cfg.bands)
                ]
            )
            | "GroupByBand" >> beam.GroupByKey()
            | "CompareInBucket"
            >> beam.ParDo(
                _CompareBucketFn(near_duplicate_pairs, cfg.threshold, cfg.max_bucket, "near_dedupe")
            )
            | "BestPerLoser" >> beam.CombinePerKey(min)
        )
        removed = (
            proposals
            | "Decisions"
            >> beam.Map(
                lambda kv: decision(
                    kv[0],
                    Status.DUPLICATE,
                    Reason.NEAR_DUPLICATE,
                    kv[1][1],
                    f"phash within {cfg.threshold} bits",
                )
            )
            | "ResolveChains" >> ResolveChains(cfg.chain_rounds)
        )
        kept = {"light": light, "removed": removed} | "DropRemoved" >> DropRemoved()
        return {"kept": kept, "removed": removed}


# ---------------------------------------------------------------------------------------------
# Caption near-dedupe: MinHash over character 5-grams, LSH over signature bands.


def caption_shingles(caption: str | None, k: int = 5) -> set[str]:
    text = " ".join((caption or "").casefold().split())
    if len(text) <= k:
        return {text} if text else set()
    return {text[i : i + k] for i in range(len(text) - k + 1)}


def minhash_signature(caption: str | None, num_perm: int, seed: int = 1) -> tuple[int, ...]:
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    for s in caption_shingles(caption):
        m.update(s.encode("utf-8"))
    return tuple(int(v) for v in m.hashvalues)


def caption_duplicate_pairs(
    items: list[tuple[str, tuple, tuple]], threshold: float
) -> list[tuple[str, str, tuple]]:
    """Items (key, signature, order) of one bucket -> losers whose estimated Jaccard >= threshold."""
    if len(items) < 2:
        return []
    sig = np.array([s for _, s, _ in items], dtype=np.uint64)  # (n, num_perm)
    similarity = (sig[:, None, :] == sig[None, :, :]).mean(axis=-1)  # (n, n)
    return cluster_losers(
        [k for k, _, _ in items], [o for _, _, o in items], similarity >= threshold
    )


@dataclass(frozen=True)
class CaptionDedupeConfig:
    threshold: float = 0.8  # estimated Jaccard similarity of caption 5-gram sets
    num_perm: int = 64
    bands: int = 16  # num_perm / bands rows per band: the S-curve bends near (1/bands)^(rows/1)
    max_bucket: int = 4096


class CaptionDedupe(beam.PTransform):
    """Near-identical captions (boilerplate product titles, templated alt-text) -> one survivor."""

    def __init__(self, cfg: CaptionDedupeConfig = CaptionDedupeConfig()):
        super().__init__()
        self.cfg = cfg

    def expand(self, light):
        cfg = self.cfg
        rows_per_band = cfg.num_perm // cfg.bands

        def bands(r):
            if not (r.get("caption") or "").strip():
                return []
            sig = minhash_signature(r["caption"], cfg.num_perm)
            item = (r["key"], sig, image_survivor_order(r))
            return [
                ((b, hash(sig[b * rows_per_band : (b + 1) * rows_per_band])), item)
                for b in range(cfg.bands)
            ]

        removed = (
            light
            | "Bands" >> beam.FlatMap(bands)
            | "GroupByBand" >> beam.GroupByKey()
            | "CompareInBucket"
            >> beam.ParDo(
                _CompareBucketFn(
                    caption_duplicate_pairs, cfg.threshold, cfg.max_bucket, "caption_dedupe"
                )
            )
            | "BestPerLoser" >> beam.CombinePerKey(min)
            | "Decisions"
            >> beam.Map(
                lambda kv: decision(
                    kv[0],
                    Status.DUPLICATE,
                    Reason.DUPLICATE_CAPTION,
                    kv[1][1],
                    f"caption similarity >= {cfg.threshold}",
                )
            )
            | "ResolveChains" >> ResolveChains()
        )
        kept = {"light": light, "removed": removed} | "DropRemoved" >> DropRemoved()
        return {"kept": kept, "removed": removed}
