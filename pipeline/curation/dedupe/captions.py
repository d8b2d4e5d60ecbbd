"""Caption deduplication: near-identical captions by MinHash over word 5-grams."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import apache_beam as beam
import numpy as np

from pipeline.curation.decisions import (
    DropRemoved,
    ResolveChains,
    cluster_losers,
    image_survivor_order,
)
from pipeline.curation.dedupe.near import _CompareBucketFn
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


def caption_duplicate_pairs(
    items: list[tuple[str, tuple, tuple]], threshold: float
) -> list[tuple[str, str, tuple]]:
    """Items (key, signature, order) of one bucket -> losers whose estimated Jaccard >= threshold."""
    if len(items) < 2:
        return []
    equal = equal_minhash_counts([s for _, s, _ in items])  # (n, n)
    num_perm = len(items[0][1])
    # The fewest equal values whose share (count / num_perm, in float64) reaches the threshold.
    shares = np.arange(num_perm + 1) / num_perm
    need = int(np.argmax(shares >= threshold)) if shares[-1] >= threshold else num_perm + 1
    return cluster_losers([k for k, _, _ in items], [o for _, _, o in items], equal >= need)


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
