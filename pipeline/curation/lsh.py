"""Candidate keys for near-duplicate search on 64-bit hashes, sized by the number of rows.

    tables = candidate_tables(threshold=12, rows=n)        # bit positions of each key table
    keys = table_keys(int(phash, 16), tables)              # [(table, value)], one per table
    table_recall(tables, d)                                # share of pairs d bits apart that meet

Two hashes are compared only if they agree on every bit of at least one table. With few rows
(<= 2**(64 // (threshold + 1)) * target_bucket) the tables are threshold + 1 contiguous bands, so
every pair within `threshold` bits meets (pigeonhole). With more rows such short keys make
buckets of rows / 2**width rows each - 3e8 rows at 5e9 - so the key width grows to
ceil(log2(rows / target_bucket)) bits: the 64 positions, shuffled by a seeded permutation, are cut
into 64 // width disjoint tables (every pair within 64 // width - 1 bits still meets) and
`extra_tables` tables of `width` randomly sampled positions raise the recall of pairs further
apart. Buckets then hold ~target_bucket rows at any scale, so the compares per row stay constant
and the cost of the stage is linear in rows. Pure numpy; no Beam.
"""

from __future__ import annotations

import math

import numpy as np

BITS = 64


def contiguous_bands(bands: int) -> tuple[tuple[int, ...], ...]:
    """`bands` contiguous ranges of bit positions (bit p is (value >> p) & 1)."""
    if not 1 <= bands <= BITS:
        raise ValueError(f"bands must be in 1..{BITS}, got {bands}")
    return tuple(tuple(range(i * BITS // bands, (i + 1) * BITS // bands)) for i in range(bands))


def key_width(rows: int, target_bucket: int) -> int:
    """Bits a key needs so that uniform hashes fill each bucket with <= target_bucket rows."""
    if rows <= target_bucket:
        return 0
    return min(32, math.ceil(math.log2(rows / target_bucket)))


def candidate_tables(
    threshold: int,
    rows: int,
    target_bucket: int = 2048,
    extra_tables: int = 8,
    seed: int = 0,
) -> tuple[tuple[int, ...], ...]:
    """The key tables for `rows` rows (see the module docstring); deterministic in its arguments."""
    if threshold < 0 or target_bucket < 1 or extra_tables < 0:
        raise ValueError("threshold, extra_tables must be >= 0 and target_bucket >= 1")
    pigeon = min(threshold + 1, BITS)
    width = key_width(rows, target_bucket)
    if width <= BITS // pigeon:
        return contiguous_bands(pigeon)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(BITS)
    tables = [
        tuple(sorted(perm[i * width : (i + 1) * width].tolist())) for i in range(BITS // width)
    ]
    for _ in range(extra_tables):
        tables.append(tuple(sorted(rng.choice(BITS, width, replace=False).tolist())))
    return tuple(tables)


def table_keys(value: int, tables: tuple[tuple[int, ...], ...]) -> list[tuple[int, int]]:
    """[(table index, the value's bits at the table's positions, packed)] for one hash. Positions
    are sorted; a contiguous run (a band) is one shift and mask."""
    out = []
    for t, positions in enumerate(tables):
        lo, n = positions[0], len(positions)
        if positions[-1] - lo == n - 1:
            v = (value >> lo) & ((1 << n) - 1)
        else:
            v = 0
            for j, p in enumerate(positions):
                v |= ((value >> p) & 1) << j
        out.append((t, v))
    return out


def table_recall(
    tables: tuple[tuple[int, ...], ...], d: int, trials: int = 20_000, seed: int = 0
) -> float:
    """Share of hash pairs exactly d bits apart (differing bits uniform) that agree on every bit of
    at least one table: the chance that the stage compares them at all."""
    rng = np.random.default_rng(seed)
    diff = np.zeros((trials, BITS), dtype=bool)
    cols = np.argsort(rng.random((trials, BITS)), axis=1)[:, :d]
    np.put_along_axis(diff, cols, True, axis=1)
    meet = np.zeros(trials, dtype=bool)
    for positions in tables:
        meet |= ~diff[:, list(positions)].any(axis=1)
    return float(meet.mean())


def uniform_within(threshold: int) -> float:
    """Chance that two independent uniform 64-bit hashes are within `threshold` bits."""
    return sum(math.comb(BITS, i) for i in range(threshold + 1)) / 2.0**BITS
