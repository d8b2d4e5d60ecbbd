"""Dedupe building blocks: pure functions on lists, Beam pieces with TestPipeline."""

import logging

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics import monitoring_infos as mi
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.curation.decisions import ResolveChains, cluster_losers, connected_labels
from pipeline.curation.dedupe.captions import (
    CaptionDedupe,
    CaptionItem,
    caption_duplicate_pairs,
    minhash_signature,
)
from pipeline.curation.dedupe.exact import exact_duplicate_decisions
from pipeline.curation.dedupe.near import (
    NearDedupe,
    NearDedupeConfig,
    NearItem,
    near_duplicate_pairs,
)
from pipeline.curation.dedupe.urls import pick_survivor
from pipeline.results import decision


def counter(result, namespace: str, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(name))
    return sum(c.committed for c in found["counters"])


def union_find_losers(keys, orders, adjacent):
    """The previous cluster_losers: a Python union-find step per adjacent pair (the reference)."""
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
    best = {}
    for i in range(n):
        r = find(i)
        if r not in best or orders[i] < orders[best[r]]:
            best[r] = i
    return [
        (keys[i], keys[best[find(i)]], orders[best[find(i)]])
        for i in range(n)
        if best[find(i)] != i
    ]


def test_pick_survivor_is_order_independent():
    pairs = [{"url": "u", "caption": c, "key": "k", "extra": {}} for c in ("b", None, "a", "c")]
    for perm in (pairs, pairs[::-1], pairs[1:] + pairs[:1]):
        out = list(pick_survivor(perm))
        assert [p["caption"] for ok, p in out if ok] == ["a"]
        assert sorted(str(p["caption"]) for ok, p in out if not ok) == ["None", "b", "c"]


def test_exact_duplicates_keep_the_largest_original():
    rows = [
        {"key": "a", "original_width": 100, "original_height": 100, "caption": "x", "sha256": "s1"},
        {"key": "b", "original_width": 200, "original_height": 100, "caption": "x", "sha256": "s2"},
        {"key": "c", "original_width": 200, "original_height": 100, "caption": "x", "sha256": "s2"},
    ]
    out = sorted(exact_duplicate_decisions(rows), key=lambda d: d["key"])
    assert [(d["key"], d["duplicate_of"], d["error"]) for d in out] == [
        ("a", "b", "identical decoded pixels"),
        ("c", "b", "identical bytes"),
    ]


def test_near_duplicate_pairs_union_groups():
    base = 0x0F0F_0F0F_0F0F_0F0F
    items = [
        NearItem("a", f"{base:016x}", None, (1,)),
        NearItem("b", f"{base ^ 0b111:016x}", None, (0,)),  # 3 bits from a: same group, better
        NearItem("c", f"{base ^ 0b111_1111_1111_1111:016x}", None, (2,)),  # 12 bits from a
        NearItem("d", f"{~base & (2**64 - 1):016x}", None, (3,)),  # far from everything
    ]
    out = {loser: survivor for loser, survivor, _ in near_duplicate_pairs(items, threshold=12)}
    assert out == {"a": "b", "c": "b"}


def test_cluster_losers_transitive():
    adj = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
    assert sorted(cluster_losers(["x", "y", "z"], [(2,), (1,), (0,)], adj)) == [
        ("x", "z", (0,)),
        ("y", "z", (0,)),
    ]


@pytest.mark.parametrize("density", [0.0, 0.002, 0.02, 0.3, 1.0])
def test_cluster_losers_equals_union_find(density):
    rng = np.random.default_rng(int(density * 1000))
    n = 400
    adjacent = rng.random((n, n)) < density  # not symmetric: only the upper triangle counts
    np.fill_diagonal(adjacent, True)
    keys = [f"k{i:03d}" for i in range(n)]
    orders = [(int(o),) for o in rng.integers(0, 50, size=n)]  # ties: the smaller index wins
    assert cluster_losers(keys, orders, adjacent) == union_find_losers(keys, orders, adjacent)


def test_connected_labels_follows_a_long_shuffled_path():
    n = 3000
    perm = np.random.default_rng(0).permutation(n)
    adjacent = np.zeros((n, n), dtype=bool)
    adjacent[perm[:-1], perm[1:]] = adjacent[perm[1:], perm[:-1]] = True
    adjacent[perm[1500], perm[1501]] = adjacent[perm[1501], perm[1500]] = False  # two paths
    labels = connected_labels(adjacent)
    assert set(labels[perm[:1501]].tolist()) == {perm[:1501].min()}
    assert set(labels[perm[1501:]].tolist()) == {perm[1501:].min()}


@pytest.mark.parametrize(("num_perm", "threshold"), [(64, 0.8), (10, 0.3), (7, 0.6), (5, 1.0)])
def test_caption_pairs_equal_the_float_similarity_rule(num_perm, threshold):
    rng = np.random.default_rng(num_perm)
    bases = rng.integers(0, 2**40, size=(12, num_perm))
    sigs = []
    for i in range(120):  # copies of 12 signatures with a random share of values replaced
        sig = bases[i % 12].copy()
        redo = rng.random(num_perm) < rng.random() * 0.6
        sig[redo] = rng.integers(0, 2, size=redo.sum())
        sigs.append(tuple(int(v) for v in sig))
    items = [CaptionItem(f"k{i}", s, (i % 7,)) for i, s in enumerate(sigs)]
    sig = np.array(sigs, dtype=np.uint64)
    similarity = (sig[:, None, :] == sig[None, :, :]).mean(axis=-1)  # the previous (n, n, P) way
    want = union_find_losers(
        [k for k, _, _ in items], [o for *_, o in items], similarity >= threshold
    )
    assert want and caption_duplicate_pairs(items, threshold) == want


def test_caption_minhash_finds_near_identical_captions():
    a = "Nike Air Max 90 Essential Men's Running Shoes White Black Size 42"
    b = "Nike Air Max 90 Essential Men's Running Shoes White/Black Size 43"
    c = "A golden retriever puppy playing with a red ball in the garden"
    items = [
        CaptionItem(k, minhash_signature(t, 64), (i,))
        for i, (k, t) in enumerate([("a", a), ("b", b), ("c", c)])
    ]
    assert [(loser, s) for loser, s, _ in caption_duplicate_pairs(items, 0.6)] == [("b", "a")]


def test_resolve_chains_names_the_final_survivor():
    decisions = [
        decision("a", "duplicate", "near_duplicate", "b"),
        decision("b", "duplicate", "duplicate_image", "c"),
        decision("c", "duplicate", "near_duplicate", "d"),
        decision("x", "filtered", "language"),
    ]
    with test_pipeline.TestPipeline() as p:
        out = (
            p
            | beam.Create(decisions)
            | ResolveChains()
            | beam.Map(lambda d: (d["key"], d["duplicate_of"], d["reason"]))
        )
        assert_that(
            out,
            equal_to(
                [
                    ("a", "d", "near_duplicate"),
                    ("b", "d", "duplicate_image"),
                    ("c", "d", "near_duplicate"),
                    ("x", None, "language"),
                ]
            ),
        )


def run_resolve_chains(decisions, rounds, want):
    """ResolveChains(rounds) on `decisions`, asserting (key, duplicate_of, reason) == want."""
    p = test_pipeline.TestPipeline()
    out = (
        p
        | beam.Create(decisions)
        | ResolveChains(rounds)
        | beam.Map(lambda d: (d["key"], d["duplicate_of"], d["reason"]))
    )
    assert_that(out, equal_to(want))
    result = p.run()
    result.wait_until_finish()
    return counter(result, "resolve_chains", "unresolved_chains")


def test_resolve_chains_counts_chains_longer_than_its_rounds():
    chain = [
        decision(f"a{i:02d}", "duplicate", "near_duplicate", f"a{i + 1:02d}") for i in range(20)
    ]
    # 3 rounds follow 8 links: a{i} -> a{i+8}, so a00..a11 still name a removed row.
    want = [(f"a{i:02d}", f"a{min(i + 8, 20):02d}", "near_duplicate") for i in range(20)]
    assert run_resolve_chains(chain, 3, want) == 12
    want = [(f"a{i:02d}", "a20", "near_duplicate") for i in range(20)]
    assert run_resolve_chains(chain, 5, want) == 0


def test_resolve_chains_follows_a_url_duplicate_of_a_removed_survivor():
    decisions = [
        decision("u", "duplicate", "duplicate_url", "u"),  # a URL duplicate names its own key
        decision("u", "duplicate", "near_duplicate", "s"),  # then its survivor lost to "s"
        decision("f", "filtered", "language"),
    ]
    want = [("f", None, "language"), ("u", "s", "duplicate_url"), ("u", "s", "near_duplicate")]
    assert run_resolve_chains(decisions, 3, want) == 0


def test_resolve_chains_groups_only_decisions_with_a_survivor():
    filtered = [decision(f"f{i}", "filtered", "language") for i in range(500)]
    links = [decision("a", "duplicate", "near_duplicate", "b")]
    p = test_pipeline.TestPipeline()
    _ = p | beam.Create(filtered + links) | "Resolve" >> ResolveChains(2)
    result = p.run()
    result.wait_until_finish()
    # Elements entering each GroupByKey of ResolveChains, from the runner's own counts.
    counts = {
        info.labels.get("PCOLLECTION"): mi.extract_metric_result_map_value(info)
        for info in result.monitoring_infos()
        if info.urn == mi.ELEMENT_COUNT_URN
    }
    grouped = [
        counts.get(next(iter(t.inputs.values())), 0)
        for t in p.to_runner_api().components.transforms.values()
        if t.spec.urn == "beam:transform:group_by_key:v1" and t.unique_name.startswith("Resolve/")
    ]
    assert grouped == [2, 2, 2]  # 2 rounds + the check, each: one "in" and one "out" element


def test_oversized_buckets_are_counted_and_logged(caplog):
    # Eight phashes 0-7 bits apart, differing only in the low 16-bit band: they share the three
    # other band buckets, which max_bucket 3 cuts into hash-sorted chunks {0,1,2} {3,4,5} {6,7}.
    rows = [
        {"key": f"k{i}", "phash": f"0f0f0f0f0f0f{(1 << i) - 1:04x}", "original_width": 10 + i}
        | {"original_height": 10}  # the more pixels, the better: k7 is best
        for i in range(8)
    ]
    p = test_pipeline.TestPipeline()
    res = p | beam.Create(rows) | NearDedupe(NearDedupeConfig(bands=4, max_bucket=3))
    assert_that(
        res["removed"] | beam.Map(lambda d: (d["key"], d["duplicate_of"])),
        # One group within 12 bits, but chunks never meet: three survivors, not one.
        equal_to([("k0", "k2"), ("k1", "k2"), ("k3", "k5"), ("k4", "k5"), ("k6", "k7")]),
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.curation.dedupe.near"):
        result = p.run()
        result.wait_until_finish()
    assert counter(result, "near_dedupe", "oversized_buckets") == 3
    assert counter(result, "near_dedupe", "oversized_bucket_rows") == 24
    assert any("holds 8 items > max_bucket 3" in r.getMessage() for r in caplog.records)


def test_caption_dedupe_stage():
    rows = [
        {"key": f"k{i}", "caption": c, "original_width": 10, "original_height": 10}
        for i, c in enumerate(
            [
                "Buy the best cheap replica watch online today free shipping",
                "Buy the best cheap replica watch online today, free shipping!",
                "A cat sleeping on a sunny windowsill",
                None,
            ]
        )
    ]
    with test_pipeline.TestPipeline() as p:
        res = p | beam.Create(rows) | CaptionDedupe()
        assert_that(
            res["removed"] | beam.Map(lambda d: (d["key"], d["duplicate_of"])),
            equal_to([("k1", "k0")]),
            label="Removed",
        )
        assert_that(
            res["kept"] | beam.Map(lambda r: r["key"]), equal_to(["k0", "k2", "k3"]), label="Kept"
        )
