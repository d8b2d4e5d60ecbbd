"""Caption deduplication: near-identical captions by MinHash over word 5-grams."""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
from pipeline.results import decision
from schemas import Reason, Status

log = logging.getLogger(__name__)


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


class CaptionItem(NamedTuple):
    """A row as caption dedupe compares it."""

    key: str
    signature: tuple[int, ...]  # MinHash of the caption's 5-grams: bands come from it
    order: tuple  # image_survivor_order: the smallest survives


def caption_duplicate_pairs(
    items: list[CaptionItem], threshold: float
) -> list[tuple[str, str, tuple]]:
    """Items of one bucket -> losers whose estimated Jaccard >= threshold."""
    if len(items) < 2:
        return []
    equal = equal_minhash_counts([it.signature for it in items])  # (n, n)
    num_perm = len(items[0].signature)
    # The fewest equal values whose share (count / num_perm, in float64) reaches the threshold.
    shares = np.arange(num_perm + 1) / num_perm
    need = int(np.argmax(shares >= threshold)) if shares[-1] >= threshold else num_perm + 1
    return cluster_losers([it.key for it in items], [it.order for it in items], equal >= need)


def equal_minhash_counts(signatures: list[tuple[int, ...]]) -> np.ndarray:
    """(n, n) number of equal MinHash values per pair, counted one permutation at a time: an
    (n, n) uint8 (16 MB at 4096 rows), never an (n, n, num_perm) array."""
    by_perm = np.array(signatures, dtype=np.uint64).T.copy()  # (num_perm, n), rows contiguous
    num_perm, n = by_perm.shape
    equal = np.zeros((n, n), dtype=np.min_scalar_type(num_perm))
    same = np.empty((n, n), dtype=bool)
    for values in by_perm:  # (n,)
        np.equal(values[:, None], values[None, :], out=same)
        equal += same
    return equal


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
            item = CaptionItem(r["key"], sig, image_survivor_order(r))
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
                CompareBucketFn(
                    caption_duplicate_pairs,
                    cfg.threshold,
                    cfg.max_bucket,
                    "caption_dedupe",
                    sort_by="signature",
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
        removed = removed | "Count" >> CountRemoved("caption_dedupe")
        kept = {"light": light, "removed": removed} | "DropRemoved" >> DropRemoved()
        return {"kept": kept, "removed": removed}
