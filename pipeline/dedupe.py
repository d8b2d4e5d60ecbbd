"""Deduplication stages. Every removed row is recorded with the survivor's key.

unique = pairs | "DedupeUrls" >> DedupeUrls()
unique["unique"], unique["duplicates"]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.lsh import candidate_tables, contiguous_bands, table_keys, table_recall
from pipeline.results import decision, result_row
from schemas import Reason, Status
from schemas.imagehash import hamming_matrix, hamming_matrix_ints

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


def _min_neighbour_label(pairs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(k,) the smallest label among each node's neighbours, both ways of `pairs` (k, k) (k where
    none), in row blocks so the (rows, k) temporary stays under ~16 MB. Reading `pairs` by rows
    and by columns avoids materialising the transposed (symmetric) matrix."""
    k = len(labels)
    by_row = np.empty(k, dtype=labels.dtype)
    by_col = np.full(k, k, dtype=labels.dtype)
    rows = max(1, (1 << 22) // max(k, 1))
    for start in range(0, k, rows):
        block = pairs[start : start + rows]  # (rows, k) bool
        by_row[start : start + rows] = np.where(block, labels[None, :], k).min(axis=1)
        col = np.where(block, labels[start : start + rows, None], k).min(axis=0)  # (k,)
        np.minimum(by_col, col, out=by_col)
    return np.minimum(by_row, by_col)


def connected_labels(pairs: np.ndarray) -> np.ndarray:
    """(k,) for pairs (k, k) read as undirected edges: each node's label is the smallest node
    index of its connected component. Min-label propagation with hooking and pointer jumping:
    every round each tree hooks onto its smallest neighbouring tree, so the number of trees per
    component at least halves and a path of k nodes takes ~log2(k) rounds, each O(k^2) in numpy."""
    k = len(pairs)
    labels = np.arange(k, dtype=np.int32)  # invariant: labels[i] <= i, in i's component
    while True:
        nbr = _min_neighbour_label(pairs, labels)
        new = np.minimum(labels, nbr)
        np.minimum.at(new, labels, nbr)  # hook: i's root takes i's smallest neighbour label
        while True:  # pointer jumping until every node names its root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new


def cluster_losers(
    keys: list[str], orders: list[tuple], adjacent: np.ndarray
) -> list[tuple[str, str, tuple]]:
    """Connected groups of the pairs marked above the diagonal of `adjacent` (n, n) ->
    (loser, survivor key, survivor order) for every item that is not the best (smallest order,
    then smallest index) of its group, losers in index order. Only items with at least one
    neighbour enter the vectorised component search, and no Python loop runs per pair."""
    adjacent = np.asarray(adjacent, dtype=bool)
    marks = adjacent.sum(axis=0, dtype=np.int32) + adjacent.sum(axis=1, dtype=np.int32)  # (n,)
    linked = np.flatnonzero(marks > 2 * adjacent.diagonal())  # (k,) items with a mark off it
    if len(linked) == 0:
        return []
    sub = adjacent if len(linked) == len(adjacent) else adjacent[linked][:, linked]  # (k, k)
    labels = connected_labels(np.triu(sub, k=1))  # only pairs i < j count, as edges both ways
    best: dict[int, int] = {}  # component label -> index into `linked` of its best item
    for j, (i, label) in enumerate(zip(linked.tolist(), labels.tolist())):
        if label not in best or orders[i] < orders[linked[best[label]]]:
            best[label] = j
    out = []
    for i, label in zip(linked.tolist(), labels.tolist()):
        b = int(linked[best[label]])
        if b != i:
            out.append((keys[i], keys[b], orders[b]))
    return out


def near_duplicate_pairs(
    items: list[tuple], threshold: int | tuple[int, int | None]
) -> list[tuple[str, str, tuple]]:
    """Items (key, phash, order) or (key, phash, dhash, order) of one LSH bucket -> (loser,
    survivor key, survivor order). `threshold` is the pHash limit, or (pHash limit, dHash limit):
    pairs within both are joined (a dHash missing on either side is not held against the pair);
    each connected group keeps its best item."""
    if len(items) < 2:
        return []
    t, t2 = threshold if isinstance(threshold, tuple) else (threshold, None)
    adjacent = hamming_matrix([it[1] for it in items]) <= t
    if t2 is not None and len(items[0]) == 4:
        dhashes = [it[2] for it in items]
        present = np.array([h is not None for h in dhashes], dtype=bool)
        ints = np.array([int(h, 16) if h else 0 for h in dhashes], dtype=np.uint64)
        close = hamming_matrix_ints(ints) <= t2
        close |= ~(present[:, None] & present[None, :])
        adjacent &= close
    return cluster_losers([it[0] for it in items], [it[-1] for it in items], adjacent)


class _CompareBucketFn(beam.DoFn):
    """(bucket, items) -> (loser, (survivor order, survivor)) from `pairs_fn(items, threshold)`.

    Items are read as a stream into windows of at most `window` items, each sorted by hash and
    compared in chunks of `max_bucket`, so a bucket of any size costs bounded memory. A bucket
    over `max_bucket` items loses the pairs that fall in different chunks (lost recall): such
    buckets and their items are counted and the first one of each bundle is logged. With
    NearDedupe's row-count-sized keys this only happens to skewed hashes (placeholders)."""

    def __init__(self, pairs_fn, threshold, max_bucket: int, stage: str, window: int = 0):
        self.pairs_fn, self.threshold, self.max_bucket = pairs_fn, threshold, max_bucket
        self.stage = stage
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
            window.sort(key=lambda it: it[1])  # by hash: chunks of a huge bucket stay local
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


def _follow_once(element):
    """Pointer jumping. (K, [("out", K's own target) or ("in", a decision naming K)]): the
    re-iterable group is read twice (the target, then the decisions), never held as a list."""
    key, tagged = element
    # K's own targets: one, unless two stages removed K; a URL duplicate names its own key.
    targets = [v for tag, v in tagged if tag == "out" and v != key]
    target = min(targets) if targets else None
    for tag, d in tagged:
        if tag == "in":
            if target is not None and target != d["key"]:
                d = {**d, "duplicate_of": target}
            yield d


class _CountUnresolvedFn(beam.DoFn):
    """(K, tagged as in _follow_once) -> the decisions naming K, unchanged; those still naming a
    removed row (a chain longer than the rounds followed) are counted, and logged per bundle."""

    def __init__(self, rounds: int):
        self.rounds = rounds
        self.unresolved = Metrics.counter("resolve_chains", "unresolved_chains")

    def start_bundle(self):
        self._count = 0

    def process(self, element):
        key, tagged = element
        removed = any(tag == "out" and v != key for tag, v in tagged)
        for tag, d in tagged:
            if tag == "in":
                if removed:
                    self._count += 1
                    self.unresolved.inc()
                yield d

    def finish_bundle(self):
        if self._count:
            log.warning(
                "ResolveChains: %d decisions still name a removed row after %d rounds "
                "(chains over %d links): raise chain_rounds",
                self._count,
                self.rounds,
                2**self.rounds,
            )


def _join_by_target(decisions, label: str):
    """Decisions with duplicate_of -> (K, tagged): ("in", d) keyed by its target K, and ("out",
    target) keyed by its own key, grouped together (one GroupByKey, re-iterable values)."""
    ins = decisions | f"ByTarget{label}" >> beam.Map(lambda d: (d["duplicate_of"], ("in", d)))
    outs = decisions | f"ByLoser{label}" >> beam.Map(
        lambda d: (d["key"], ("out", d["duplicate_of"]))
    )
    return (ins, outs) | f"Tag{label}" >> beam.Flatten() | f"Join{label}" >> beam.GroupByKey()


class ResolveChains(beam.PTransform):
    """Decisions whose `duplicate_of` may itself have been removed as a duplicate -> decisions
    naming the final survivor (each round halves the longest chain; 3 rounds follow 8 links).
    Decisions without `duplicate_of` (filters) go around the joins, so they never meet in one
    group; a final join counts decisions still naming a removed row (`unresolved_chains`)."""

    def __init__(self, rounds: int = 3):
        super().__init__()
        self.rounds = rounds

    def expand(self, decisions):
        links, others = decisions | "SplitLinks" >> beam.Partition(
            lambda d, _: 0 if d["duplicate_of"] is not None else 1, 2
        )
        for r in range(self.rounds):
            links = _join_by_target(links, str(r)) | f"Follow{r}" >> beam.FlatMap(_follow_once)
        links = _join_by_target(links, "Check") | "CountUnresolved" >> beam.ParDo(
            _CountUnresolvedFn(self.rounds)
        )
        return (links, others) | "Merge" >> beam.Flatten()


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
    """Two rows are near duplicates when their 64-bit pHashes are within `threshold` bits and
    their dHashes within `verify_threshold` (None: pHash alone). Defaults chosen on real photos
    (`bench/near_hashes.py`, tested on others): every re-encoded / resized / brightness-shifted
    copy and nearly every crop of up to 2.5 % a side is found, a crop of 5 % a side about half
    the time; about 1 in 1,000 pairs of other framings of one photo (edges > 10 % apart) and no
    unrelated photo pair match. A pHash cannot tell a 5 % crop from a 10 % reframing: larger
    thresholds find more crops and merge more framings (bench/RESULTS-dedupe.md has the table).

    Candidates: rows with identical (pHash, dHash) collapse to one first (placeholder images
    become one row, not a hot bucket); the rest meet in buckets keyed by `pipeline.lsh` tables
    sized from the row count, so buckets hold ~`target_bucket` rows at any scale (`bands` fixes
    contiguous bands instead). Compared pairs are exact; what scale costs is recall of pairs
    many bits apart (see `pipeline.lsh.table_recall`, logged per run) and, for a given
    threshold, precision: unrelated real images fall within 12 bits far more often than random
    hashes do, so at 1e8+ rows use a lower threshold (README: "Near dedupe at scale")."""

    threshold: int = 10  # max Hamming distance between 64-bit pHashes
    verify_threshold: int | None = 12  # max Hamming distance between dHashes; None: not checked
    bands: int | None = None  # None: tables sized by rows (pipeline.lsh); an int: contiguous bands
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


def _near_item(r: dict) -> tuple:
    return (r["key"], r["phash"], r.get("dhash"), image_survivor_order(r))


def collapse_same_hashes(items: Iterable[tuple]) -> Iterator[tuple[bool, tuple]]:
    """Items sharing (pHash, dHash) -> (True, the best) and (False, (loser key, best key)) for the
    rest. Two passes over the re-iterable group, never a list: a placeholder shown a million
    times costs one streamed group."""
    best = min(items, key=lambda it: it[-1])
    yield True, best
    for it in items:
        if it[0] != best[0]:
            yield False, (it[0], best[0])


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
            representatives | "CountRows" >> beam.combiners.Count.Globally()
        )
        near = (
            representatives
            | "CandidateKeys" >> beam.ParDo(_CandidateKeysFn(cfg), rows)
            | "GroupByKey" >> beam.GroupByKey()
            | "CompareInBucket"
            >> beam.ParDo(
                _CompareBucketFn(
                    near_duplicate_pairs,
                    (cfg.threshold, cfg.verify_threshold),
                    cfg.max_bucket,
                    "near_dedupe",
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
