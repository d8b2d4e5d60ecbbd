"""NearDedupe at scale: key tables sized by the row count, the (pHash, dHash) collapse that turns
placeholder images into one row, and the dHash check on pHash matches."""

from __future__ import annotations

import logging
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.curation.dedupe.near import (
    NearDedupe,
    NearDedupeConfig,
    NearItem,
    collapse_same_hashes,
    near_duplicate_pairs,
)
from pipeline.curation.lsh import (
    candidate_tables,
    contiguous_bands,
    key_width,
    table_keys,
    table_recall,
    uniform_within,
)
from tests.pipeline.test_dedupe import counter


def _flip(value: int, d: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), d):
        value ^= 1 << bit
    return value


def _meet(a: int, b: int, tables) -> bool:
    return bool(set(table_keys(a, tables)) & set(table_keys(b, tables)))


def test_few_rows_get_pigeonhole_bands_every_pair_within_threshold_meets():
    tables = candidate_tables(threshold=12, rows=10_000)
    assert tables == contiguous_bands(13)
    assert sorted(p for t in tables for p in t) == list(range(64))
    rng = random.Random(0)
    for _ in range(2000):
        a = rng.getrandbits(64)
        assert _meet(a, _flip(a, rng.randint(0, 12), rng), tables)


@pytest.mark.parametrize("rows", [10**6, 10**8, 5 * 10**9])
def test_many_rows_get_wider_keys_disjoint_tables_still_guarantee_small_distances(rows):
    tables = candidate_tables(threshold=12, rows=rows, target_bucket=2048, extra_tables=8)
    width = key_width(rows, 2048)
    assert 2**width * 2048 >= rows > 2 ** (width - 1) * 2048  # buckets of ~target_bucket rows
    assert all(len(t) == width and len(set(t)) == width for t in tables)
    disjoint = tables[: 64 // width]
    assert len(tables) == 64 // width + 8
    assert len({p for t in disjoint for p in t}) == width * len(disjoint)
    rng = random.Random(rows)
    for _ in range(500):  # pairs closer than the number of disjoint tables always meet
        a = rng.getrandbits(64)
        assert _meet(a, _flip(a, rng.randint(0, len(disjoint) - 1), rng), disjoint)
    assert candidate_tables(12, rows, 2048, 8) == tables  # deterministic
    assert candidate_tables(12, rows, 2048, 8, seed=1) != tables


def test_table_recall_is_what_table_keys_do():
    tables = candidate_tables(threshold=12, rows=10**8)
    rng = random.Random(3)
    for d in (3, 8):
        pairs = [(a, _flip(a, d, rng)) for a in (rng.getrandbits(64) for _ in range(3000))]
        empirical = np.mean([_meet(a, b, tables) for a, b in pairs])
        assert abs(empirical - table_recall(tables, d, trials=20_000)) < 0.04
    assert table_recall(contiguous_bands(13), 12) == 1.0
    assert table_recall(contiguous_bands(13), 40) < 0.5


def test_buckets_stay_near_target_as_rows_grow():
    rng = np.random.default_rng(0)
    for rows in (20_000, 80_000):
        hashes = rng.integers(0, 2**63, rows, dtype=np.int64).tolist()
        tables = candidate_tables(12, rows, target_bucket=256, extra_tables=2)
        sizes = {}
        for h in hashes:
            for key in table_keys(h, tables):
                sizes[key] = sizes.get(key, 0) + 1
        assert max(sizes.values()) < 2 * 256  # uniform hashes: never a bucket far over target


def test_uniform_within():
    assert uniform_within(0) == 2.0**-64
    assert uniform_within(64) == 1.0
    assert 2.2e-7 < uniform_within(12) < 2.4e-7


class _Twice:
    """A re-iterable that counts its passes, like a Beam group; never a list."""

    def __init__(self, items):
        self.items, self.passes = items, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.items)


def test_collapse_same_hashes_keeps_the_best_in_two_passes():
    group = _Twice([NearItem(f"k{i}", "p", "d", (-i, f"k{i}")) for i in range(5)])  # k4: best
    out = list(collapse_same_hashes(group))
    assert out[0] == (True, NearItem("k4", "p", "d", (-4, "k4")))
    assert sorted(x for keep, x in out if not keep) == [(f"k{i}", "k4") for i in range(4)]
    assert group.passes == 2


def test_dhash_check_keeps_phash_lookalikes_apart():
    close_p = ("0" * 16, "0" * 15 + "f")  # 4 bits apart
    items = [
        NearItem("a", close_p[0], "0" * 16, (0, "a")),
        NearItem("b", close_p[1], "f" * 16, (1, "b")),  # dHash 64 bits away: another image
        NearItem("c", close_p[1], "0" * 15 + "1", (2, "c")),  # dHash 1 bit away: a copy
    ]
    got = {loser: surv for loser, surv, _ in near_duplicate_pairs(items, (12, 12))}
    assert got == {"c": "a"}
    assert {loser for loser, _, _ in near_duplicate_pairs(items, (12, None))} == {"b", "c"}
    assert {loser for loser, _, _ in near_duplicate_pairs(items, 12)} == {"b", "c"}
    # No dHash on one side (an output written before dhash existed): the pHash alone decides.
    older = [items[1], NearItem("d", close_p[0], None, (3, "d"))]
    assert near_duplicate_pairs(older, (12, 12)) == [("d", "b", (1, "b"))]


def _row(key: str, phash: int, dhash: int, pixels: int = 100) -> dict:
    return {
        "key": key,
        "phash": f"{phash:016x}",
        "dhash": f"{dhash:016x}",
        "original_width": pixels,
        "original_height": 1,
    }


def test_placeholders_collapse_before_bucketing_and_nothing_is_oversized():
    rng = random.Random(1)
    place_p, place_d = rng.getrandbits(64), rng.getrandbits(64)
    rows = [_row(f"p{i:05d}", place_p, place_d) for i in range(3000)]  # one placeholder, 3000x
    rows += [_row(f"u{i:04d}", rng.getrandbits(64), rng.getrandbits(64)) for i in range(300)]
    p = test_pipeline.TestPipeline()
    res = p | beam.Create(rows) | NearDedupe(NearDedupeConfig(max_bucket=64))
    assert_that(
        res["removed"] | beam.Map(lambda d: (d["key"][0], d["duplicate_of"], d["error"])),
        equal_to([("p", "p00000", "same phash and dhash")] * 2999),
        label="removed",
    )
    assert_that(res["kept"] | beam.combiners.Count.Globally(), equal_to([301]), label="kept")
    result = p.run()
    result.wait_until_finish()
    # 3000 copies in one bucket of max_bucket 64 would have been chunked; collapsed, none is.
    assert counter(result, "near_dedupe", "oversized_buckets") == 0


def test_tables_follow_the_row_count_and_find_planted_copies(caplog):
    """20k rows with target_bucket 32 need 10-bit keys (6 disjoint tables + 4 sampled): every
    copy within 5 bits is found, copies 1-5 bits away in both hashes, no unrelated row removed."""
    rng = random.Random(7)
    rows, expected = [], []
    for i in range(18_000):
        rows.append(_row(f"u{i:05d}", rng.getrandbits(64), rng.getrandbits(64)))
    for i in range(1000):  # originals get more pixels, so they survive
        orig = rows[i]
        p, d = int(orig["phash"], 16), int(orig["dhash"], 16)
        rows.append(
            _row(
                f"c{i:05d}", _flip(p, rng.randint(1, 5), rng), _flip(d, rng.randint(0, 5), rng), 50
            )
        )
        expected.append((f"c{i:05d}", orig["key"]))
    cfg = NearDedupeConfig(target_bucket=32, extra_tables=4)
    assert len(cfg.tables(len(rows))) == 10 and len(cfg.tables(len(rows))[0]) == 10
    p = test_pipeline.TestPipeline()
    res = p | beam.Create(rows) | NearDedupe(cfg)
    assert_that(
        res["removed"] | beam.Map(lambda d: (d["key"], d["duplicate_of"])),
        equal_to(expected),
    )
    with caplog.at_level(logging.INFO, logger="pipeline.curation.dedupe.near"):
        result = p.run()
        result.wait_until_finish()
    assert counter(result, "near_dedupe", "oversized_buckets") == 0
    assert any("19000 rows -> 10 key tables of 10 bits" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"threshold": 70}, "near_dedupe threshold must be an integer 0..64, got 70"),
        ({"verify_threshold": "12"}, "verify_threshold must be an integer 0..64 or null, got '12'"),
        ({"target_bucket": 0}, "target_bucket must be an integer >= 1, got 0"),
        ({"bands": True}, "bands must be an integer 1..64 or null, got True"),
    ],
)
def test_bad_near_dedupe_settings_are_one_clear_error(section, message):
    from pipeline.curation.recipe import recipe_from_dict

    with pytest.raises(ValueError, match=message):
        recipe_from_dict({"near_dedupe": section})


def test_a_recipe_can_turn_the_dhash_check_off():
    from pipeline.curation.recipe import recipe_from_dict

    assert (
        recipe_from_dict({"near_dedupe": {"verify_threshold": None}}).near_dedupe.verify_threshold
        is None
    )
