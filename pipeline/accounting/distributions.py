"""Histograms of the written rows, computed in Beam (small accumulators whatever the row count),
and their bins in display order.

    histograms = {"written": rows, "results": all_rows} | "Distributions" >> Distributions()
    histogram_bins("aspect ratio", stats.distributions["aspect ratio"])   # numeric order, gaps as 0
"""

from __future__ import annotations

import collections

import apache_beam as beam

from schemas import Status

SIDE = "original smaller side (px)"
RATIO = "aspect ratio"
CHARS = "caption length (characters)"
WORDS = "caption length (words)"
LANGUAGE = "caption language"
CLUSTER = "duplicate cluster size"

# The bin edges of each numeric histogram: [edge_i, edge_i+1), the last open-ended.
EDGES: dict[str, tuple] = {
    SIDE: (0, 64, 128, 256, 512, 1024, 2048, 4096),
    RATIO: (1.0, 1.25, 1.5, 2.0, 3.0, 4.0),
    CHARS: (0, 1, 10, 20, 50, 100, 200, 500, 1000),
    WORDS: (0, 1, 2, 3, 5, 10, 20, 50, 100),
    CLUSTER: (2, 3, 4, 5, 10, 100, 1000),
}


def bin_labels(edges: tuple) -> list[str]:
    """Every bin's label, in numeric order: "<e0", "e0-e1", ..., "eN+"."""
    inner = [f"{a}-{b}" for a, b in zip(edges, edges[1:])]
    return [f"<{edges[0]}", *inner, f"{edges[-1]}+"]


def bucket(value: float, edges: tuple) -> str:
    """Label of the half-open bucket [edge_i, edge_i+1) holding value; the last is open-ended."""
    label = f"<{edges[0]}"
    for i, edge in enumerate(edges):
        if value >= edge:
            label = f"{edge}+" if i == len(edges) - 1 else f"{edge}-{edges[i + 1]}"
    return label


def histogram_bins(name: str, hist: dict[str, int]) -> list[tuple[str, int]]:
    """A histogram's (bin, count) in the order to show it. A numeric histogram runs in numeric
    order from its first to its last non-empty bin, the empty bins between them shown as 0
    (stats.json stores bins as sorted JSON keys: "0-64", "128-256", "64-128"); a categorical one
    (languages) runs from the most common down."""
    edges = EDGES.get(name)
    if edges is None:
        return sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))
    labels = bin_labels(edges)
    present = [i for i, label in enumerate(labels) if hist.get(label)]
    if not present:
        return []
    shown = labels[present[0] : present[-1] + 1]
    stray = sorted(set(hist) - set(labels))  # bins of other edges (an older stats.json)
    return [(label, hist.get(label, 0)) for label in shown] + [(s, hist[s]) for s in stray]


def row_features(row: dict) -> list[tuple[str, str]]:
    """(distribution, bucket) pairs of one written row."""
    w, h = row.get("original_width") or 0, row.get("original_height") or 0
    caption = row.get("caption") or ""
    out = [
        (SIDE, bucket(min(w, h), EDGES[SIDE])),
        (RATIO, bucket(max(w, h) / max(1, min(w, h)), EDGES[RATIO])),
        (CHARS, bucket(len(caption), EDGES[CHARS])),
        (WORDS, bucket(len(caption.split()), EDGES[WORDS])),
    ]
    if row.get("language"):
        out.append((LANGUAGE, row["language"]))
    return out


class CounterCombineFn(beam.CombineFn):
    """Elements -> {label(element): count} with small accumulators; subclasses choose the label."""

    def label(self, element):
        return element

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, acc, element):
        acc[self.label(element)] += 1
        return acc

    def merge_accumulators(self, accs):
        out = collections.Counter()
        for a in accs:
            out.update(a)
        return out

    def extract_output(self, acc):
        return dict(acc)


class DistributionsFn(CounterCombineFn):
    """Written rows, or ready (distribution, bucket) pairs -> {distribution: {bucket: count}}.

    Features are taken inside the combiner: one element per row, not one per histogram."""

    def add_input(self, acc, element):
        for pair in (element,) if isinstance(element, tuple) else row_features(element):
            acc[pair] += 1
        return acc

    def extract_output(self, acc):
        out: dict[str, dict[str, int]] = {}
        for (name, b), n in sorted(acc.items()):
            out.setdefault(name, {})[b] = n
        # sparse: the empty bins are shown at rendering, where the order is restored too
        return {name: {b: n for b, n in histogram_bins(name, h) if n} for name, h in out.items()}


class Distributions(beam.PTransform):
    """{"written": written rows, "results": all rows} -> one dict of histograms (none for no
    rows: read it as a side input with a default)."""

    def expand(self, pcolls):
        clusters = (
            pcolls["results"]
            | "Duplicates"
            >> beam.Filter(lambda r: r["status"] == Status.DUPLICATE and r.get("duplicate_of"))
            | "Survivor" >> beam.Map(lambda r: r["duplicate_of"])
            | "ClusterSize" >> beam.combiners.Count.PerElement()
            | "ClusterBucket" >> beam.Map(lambda kv: (CLUSTER, bucket(kv[1] + 1, EDGES[CLUSTER])))
        )
        return (
            (pcolls["written"], clusters)
            | "AllFeatures" >> beam.Flatten()
            | "Histograms" >> beam.CombineGlobally(DistributionsFn()).without_defaults()
        )
