"""Decisions of the curation stages, resolved: survivor order, connected groups, chains of
duplicates followed to their final survivor (`ResolveChains`), and rows dropped by key
(`DropRemoved`)."""

from __future__ import annotations

import logging

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

log = logging.getLogger(__name__)


def image_survivor_order(row: dict) -> tuple:
    """Best copy first: most original pixels, then a caption with more words, then the key."""
    pixels = (row.get("original_width") or 0) * (row.get("original_height") or 0)
    words = len((row.get("caption") or "").split())
    return (-pixels, -min(words, 32), row["key"])


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


def _join_elements(d: dict) -> tuple:
    """A decision -> the two elements it adds to a chain join: ("in", d) under the survivor it
    names, ("out", that survivor) under its own key."""
    return (d["duplicate_of"], ("in", d)), (d["key"], ("out", d["duplicate_of"]))


class _KeyLinksFn(beam.DoFn):
    """A decision -> its join elements; decisions without a survivor (filters) go to "others",
    around the joins."""

    def process(self, d):
        if d["duplicate_of"] is None:
            yield beam.pvalue.TaggedOutput("others", d)
        else:
            yield from _join_elements(d)


def _follow_once(element):
    """Pointer jumping. (K, [("out", K's own target) or ("in", a decision naming K)]) -> each
    decision naming K, now naming K's own target where K was removed, keyed for the next join.
    The re-iterable group is read twice (the target, then the decisions), never held as a
    list."""
    key, tagged = element
    # K's own targets: one, unless two stages removed K; a URL duplicate names its own key.
    targets = [v for tag, v in tagged if tag == "out" and v != key]
    target = min(targets) if targets else None
    for tag, d in tagged:
        if tag == "in":
            if target is not None and target != d["key"]:
                d = {**d, "duplicate_of": target}
            yield from _join_elements(d)


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


class ResolveChains(beam.PTransform):
    """Decisions whose `duplicate_of` may itself have been removed as a duplicate -> decisions
    naming the final survivor (each round halves the longest chain; 3 rounds follow 8 links).
    A round is one GroupByKey: a decision's "in" element meets, under the row it names, that
    row's own "out" element. Decisions without `duplicate_of` (filters) go around the joins, so
    they never meet in one group; a final join counts decisions still naming a removed row
    (`unresolved_chains`)."""

    def __init__(self, rounds: int = 3):
        super().__init__()
        self.rounds = rounds

    def expand(self, decisions):
        # the main output's type, given: Beam would infer a union with the tagged output's
        split = decisions | "KeyLinks" >> beam.ParDo(_KeyLinksFn()).with_output_types(
            tuple[str, tuple]
        ).with_outputs("others", main="keyed")
        keyed = split.keyed
        for r in range(self.rounds):
            keyed = (
                keyed | f"Join{r}" >> beam.GroupByKey() | f"Follow{r}" >> beam.FlatMap(_follow_once)
            )
        links = (
            keyed
            | "JoinCheck" >> beam.GroupByKey()
            | "CountUnresolved" >> beam.ParDo(_CountUnresolvedFn(self.rounds))
        )
        return (links, split.others) | "Merge" >> beam.Flatten()


def _drop_removed(element):
    """(key, [row, or None for a removal decision]) -> the rows, unless one decision removed
    the key."""
    _, values = element
    if all(v is not None for v in values):
        yield from values


class DropRemoved(beam.PTransform):
    """{"light": rows, "removed": decisions} -> the rows without a decision (one join by key:
    a row keyed by its key meets a None for each decision naming it)."""

    def expand(self, pcolls):
        return (
            (
                pcolls["light"] | "KeyLight" >> beam.Map(lambda r: (r["key"], r)),
                pcolls["removed"] | "KeyRemoved" >> beam.Map(lambda d: (d["key"], None)),
            )
            | "Both" >> beam.Flatten()
            | "JoinByKey" >> beam.GroupByKey()
            | "KeepUnremoved" >> beam.FlatMap(_drop_removed)
        )


# the output type declared: Beam would infer it from the bytecode at every build
@beam.typehints.with_output_types(beam.typehints.Any)
class _CountByReasonFn(beam.DoFn):
    def __init__(self, namespace: str):
        self.namespace = namespace

    def setup(self):
        self._counters = {}

    def process(self, d):
        counter = self._counters.get(d["reason"])
        if counter is None:
            counter = self._counters[d["reason"]] = Metrics.counter(self.namespace, d["reason"])
        counter.inc()
        yield d


class CountRemoved(beam.PTransform):
    """A stage's removal decisions, unchanged, each counted by reason (a Beam counter in the
    stage's namespace, as filters count theirs)."""

    def __init__(self, namespace: str):
        super().__init__()
        self.namespace = namespace

    def expand(self, decisions):
        return decisions | "CountByReason" >> beam.ParDo(_CountByReasonFn(self.namespace))
