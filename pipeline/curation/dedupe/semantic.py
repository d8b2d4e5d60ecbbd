"""Semantic deduplication (SemDeDup, Abbas et al. 2023): pairs whose image embeddings are almost
parallel show the same thing, even when their pixels differ too much for a perceptual hash.

    removed = light | "SemanticDedupe" >> SemanticDedupe(SemDedupConfig(threshold=0.95))

  1. centroids: a deterministic uniform sample of the embeddings (the `sample_size` smallest
     hashes of seed + key: a bottom-k sample, Beam's Top combiner), then spherical k-means in
     numpy in one DoFn -- the sample is small, the data set never meets the driver;
  2. assignment: every row to its nearest centroid (a Map with the centroids as a side input);
  3. per cluster (GroupByKey by cluster id): pairs above the cosine `threshold` are joined,
     and each connected group keeps one survivor (decisions.cluster_losers): the best CLIP score,
     then the most pixels, the longer caption, the smaller key.

In a recipe (light rows must carry `image_embedding`: a `score` section, or a scored source):

    stages: [clip_score, semantic_dedupe]
    semantic_dedupe: {threshold: 0.95, clusters: 1000}
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.curation.decisions import DropRemoved, cluster_losers, image_survivor_order
from pipeline.results import decision
from schemas import Reason, Status

EMBEDDING_COLUMN = "image_embedding"


@dataclass(frozen=True)
class SemDedupConfig:
    threshold: float = 0.95  # cosine similarity at or above which two images are duplicates
    clusters: int = 100  # k-means clusters; aim for a few thousand rows per cluster
    sample_size: int = 20_000  # embeddings the centroids are fitted on
    iterations: int = 20  # Lloyd iterations of the k-means
    seed: int = 0  # the sample and the k-means initialization
    max_cluster: int = 4096  # larger clusters are compared in chunks, ordered along the centroid

    def __post_init__(self):
        if not -1 <= self.threshold <= 1:
            raise ValueError(
                f"semantic_dedupe threshold must be a cosine in [-1, 1], got {self.threshold}"
            )
        if self.clusters < 1 or self.sample_size < 1 or self.max_cluster < 2:
            raise ValueError(
                "semantic_dedupe clusters, sample_size and max_cluster must be positive"
            )


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """(n, D) -> float32 rows of unit length (zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def sample_hash(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def spherical_kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Unit rows (n, D) -> k unit centroids (k', D), k' = min(k, n): k-means++ seeding, then
    Lloyd steps on cosine similarity. Deterministic for a given input order and seed."""
    n = x.shape[0]
    k = min(k, n)
    if k == 0:
        return np.zeros((0, x.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(n)]]
    nearest = 1 - x @ centroids[0]  # (n,) cosine distance to the nearest centroid so far
    for _ in range(1, k):
        weights = np.maximum(nearest, 0) ** 2
        total = weights.sum()
        i = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
        centroids.append(x[i])
        nearest = np.minimum(nearest, 1 - x @ x[i])
    c = np.stack(centroids)  # (k, D)
    for _ in range(iterations):
        assign = (x @ c.T).argmax(axis=1)  # (n,)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        filled = np.linalg.norm(sums, axis=1) > 0
        c[filled] = unit_rows(sums[filled])  # an empty cluster keeps its centroid
    return c.astype(np.float32)


def fit_centroids(sample: list[tuple], cfg: SemDedupConfig) -> np.ndarray:
    """The bottom-k sample [(hash, key, embedding)] -> centroids (k, D)."""
    if not sample:
        return np.zeros((0, 0), dtype=np.float32)
    sample = sorted(sample, key=lambda t: (t[0], t[1]))  # combiner output order is not fixed
    x = unit_rows(np.stack([e for _, _, e in sample]))
    return spherical_kmeans(x, cfg.clusters, cfg.iterations, cfg.seed)


def nearest_centroid(embedding: np.ndarray, centroids: np.ndarray) -> int:
    return int((centroids @ unit_rows(embedding[None])[0]).argmax())


def semantic_survivor_order(row: dict) -> tuple:
    """Best first: the best-aligned pair (highest CLIP score), then image_survivor_order."""
    score = row.get("clip_score")
    return (-score if score is not None else math.inf, *image_survivor_order(row))


def semantic_duplicate_pairs(
    items: list[tuple[str, np.ndarray, tuple]], threshold: float
) -> list[tuple[str, str, tuple]]:
    """Items (key, embedding, order) of one cluster chunk -> (loser, survivor key, survivor
    order): pairs with cosine >= threshold are joined; each connected group keeps its best."""
    if len(items) < 2:
        return []
    x = unit_rows(np.stack([e for _, e, _ in items]))  # (n, D)
    adjacent = x @ x.T >= threshold  # (n, n)
    return cluster_losers([k for k, _, _ in items], [o for _, _, o in items], adjacent)


class _CompareClusterFn(beam.DoFn):
    """(cluster, items) -> duplicate decisions; big clusters in chunks along the centroid."""

    def __init__(self, cfg: SemDedupConfig):
        self.cfg = cfg
        self.duplicates = Metrics.counter("semantic_dedupe", "duplicates")
        self.oversized = Metrics.counter("semantic_dedupe", "oversized_clusters")

    def process(self, element, centroids):
        cluster, items = element
        items = list(items)
        if len(items) > self.cfg.max_cluster:
            # Near-identical embeddings lie at nearly the same cosine to the centroid: ordered by
            # it, they stay in one chunk unless they straddle a border.
            self.oversized.inc()
            along = unit_rows(np.stack([e for _, e, _ in items])) @ centroids[cluster]
            items = [items[i] for i in np.lexsort(([k for k, _, _ in items], -along))]
        else:
            items.sort(key=lambda it: it[0])
        for start in range(0, len(items), self.cfg.max_cluster):
            chunk = items[start : start + self.cfg.max_cluster]
            for loser, survivor, _ in semantic_duplicate_pairs(chunk, self.cfg.threshold):
                self.duplicates.inc()
                yield decision(
                    loser,
                    Status.DUPLICATE,
                    Reason.SEMANTIC_DUPLICATE,
                    survivor,
                    f"image embedding cosine >= {self.cfg.threshold}",
                )


class SemanticDedupe(beam.PTransform):
    """Light rows with `image_embedding` -> {"kept", "removed"}; rows without one are kept."""

    def __init__(self, cfg: SemDedupConfig = SemDedupConfig()):
        super().__init__()
        self.cfg = cfg

    def expand(self, light):
        cfg = self.cfg
        embedded = light | "WithEmbedding" >> beam.Filter(
            lambda r: r.get(EMBEDDING_COLUMN) is not None
        )
        centroids = beam.pvalue.AsSingleton(
            embedded
            | "SampleItems"
            >> beam.Map(
                lambda r: (
                    sample_hash(r["key"], cfg.seed),
                    r["key"],
                    np.asarray(r[EMBEDDING_COLUMN]),
                )
            )
            | "BottomK" >> beam.combiners.Top.Of(cfg.sample_size, key=lambda t: t[:2], reverse=True)
            | "KMeans" >> beam.Map(fit_centroids, cfg=cfg)
        )
        removed = (
            embedded
            | "Assign"
            >> beam.Map(
                lambda r, c: (
                    nearest_centroid(np.asarray(r[EMBEDDING_COLUMN]), c),
                    (r["key"], np.asarray(r[EMBEDDING_COLUMN]), semantic_survivor_order(r)),
                ),
                c=centroids,
            )
            | "GroupByCluster" >> beam.GroupByKey()
            | "CompareInCluster" >> beam.ParDo(_CompareClusterFn(cfg), centroids=centroids)
        )
        kept = {"light": light, "removed": removed} | "DropRemoved" >> DropRemoved()
        return {"kept": kept, "removed": removed}
