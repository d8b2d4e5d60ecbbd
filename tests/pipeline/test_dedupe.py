"""Dedupe building blocks: pure functions on lists, Beam pieces with TestPipeline."""

import apache_beam as beam
import numpy as np
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.dedupe import (
    CaptionDedupe,
    ResolveChains,
    caption_duplicate_pairs,
    cluster_losers,
    exact_duplicate_decisions,
    minhash_signature,
    near_duplicate_pairs,
    pick_survivor,
)
from pipeline.results import decision


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
        ("a", f"{base:016x}", (1,)),
        ("b", f"{base ^ 0b111:016x}", (0,)),  # 3 bits from a: same group, better order
        ("c", f"{base ^ 0b111_1111_1111_1111:016x}", (2,)),  # 12 bits from b's neighbour a
        ("d", f"{~base & (2**64 - 1):016x}", (3,)),  # far from everything
    ]
    out = {loser: survivor for loser, survivor, _ in near_duplicate_pairs(items, threshold=12)}
    assert out == {"a": "b", "c": "b"}


def test_cluster_losers_transitive():
    adj = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
    assert sorted(cluster_losers(["x", "y", "z"], [(2,), (1,), (0,)], adj)) == [
        ("x", "z", (0,)),
        ("y", "z", (0,)),
    ]


def test_caption_minhash_finds_near_identical_captions():
    a = "Nike Air Max 90 Essential Men's Running Shoes White Black Size 42"
    b = "Nike Air Max 90 Essential Men's Running Shoes White/Black Size 43"
    c = "A golden retriever puppy playing with a red ball in the garden"
    items = [
        (k, minhash_signature(t, 64), (i,))
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
