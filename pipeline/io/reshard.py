"""An existing webpairs output as rows, and new shards made of its samples: balanced, shuffled
by a seed, with tar members copied as they are (no image is decoded or re-encoded).

    source = open_source("out/")                      # driver: the manifest and one schema
    rows = p | ReadSource(source)                     # result rows from the per-shard parquet
    rows = p | ReadSource(source, images=True)        # ... with the tar's image bytes, to score
    written = kept | Reshard(source, ShardConfig("new/", 10_000), seed=0)

Placement: S = ceil(N / samples_per_shard) shards of floor(N / S) or ceil(N / S) samples, in
the order of a seeded 64-bit hash of the key -- a uniform permutation of all samples, the same
on every run and runner -- found without a global sort (PlaceSamples).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import math
import os
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.io.layout import MANIFEST_NAME, join_path
from pipeline.io.read_shards import shard_members
from pipeline.io.shards import ShardConfig, public_row, shard_name, write_shard
from pipeline.io.url_lists import InputError
from pipeline.scoring.identity import is_remote
from schemas import Manifest, ManifestError, group_samples, image_extension
from schemas.records import EMBEDDING_FIELD_NAMES, RESULT_FIELD_NAMES


@dataclass(frozen=True)
class SourceShard:
    name: str  # "00003": the value of its rows' `shard`
    tar: str
    parquet: str


@dataclass(frozen=True)
class Source:
    path: str  # the dataset folder
    manifest: Manifest
    shards: tuple[SourceShard, ...]
    schema: pa.Schema  # of its per-shard parquet

    @property
    def extra_fields(self) -> tuple[pa.Field, ...]:
        """Pass-through columns: neither result fields nor embeddings."""
        fixed = set(RESULT_FIELD_NAMES) | set(EMBEDDING_FIELD_NAMES)
        return tuple(f for f in self.schema if f.name not in fixed)

    @property
    def has_embeddings(self) -> bool:
        return "image_embedding" in self.schema.names

    @property
    def scored(self) -> bool:
        return self.manifest.scorer is not None and "clip_score" in self.schema.names


def open_source(spec: str) -> Source:
    """Driver side: the manifest and one parquet schema are read, nothing else."""
    folder = spec[: -len(MANIFEST_NAME)].rstrip("/") if spec.endswith(MANIFEST_NAME) else spec
    folder = folder.rstrip("/") or "."
    if not is_remote(folder):
        folder = os.path.abspath(folder)
    path = join_path(folder, MANIFEST_NAME)
    if not FileSystems.exists(path):
        raise InputError(f"--input {spec} is not a webpairs output (no {MANIFEST_NAME})")
    with FileSystems.open(path) as f:
        try:
            manifest = Manifest.from_json(f.read().decode("utf-8"))
        except ManifestError as e:
            raise InputError(f"--input {spec}: {e}") from None
    shards = []
    for entry in manifest.shardlist:
        if not entry.parquet:
            raise InputError(
                f"--input {spec}: shard {entry.url} has no parquet metadata "
                "(select reads what a webpairs output records)"
            )
        name = entry.url.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        shards.append(
            SourceShard(name, join_path(folder, entry.url), join_path(folder, entry.parquet))
        )
    schema = pa.schema([])
    if shards:
        with FileSystems.open(shards[0].parquet) as f:
            schema = pq.read_schema(io.BytesIO(f.read()))
    return Source(folder, manifest, tuple(shards), schema)


def _embedding_column(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    arr = column.combine_chunks()
    values = arr.values.to_numpy(zero_copy_only=False)
    offsets = arr.offsets.to_numpy()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return [
        values[offsets[i] : offsets[i + 1]].copy() if valid[i] else None for i in range(len(arr))
    ]


def table_rows(table: pa.Table) -> list[dict]:
    """A result table -> rows; embeddings become float16 numpy arrays, as ScorePairs makes them."""
    columns = {
        name: _embedding_column(table.column(name))
        if name in EMBEDDING_FIELD_NAMES
        else table.column(name).to_pylist()
        for name in table.column_names
    }
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def read_shard_rows(shard: SourceShard) -> list[dict]:
    with FileSystems.open(shard.parquet) as f:
        rows = table_rows(pq.read_table(io.BytesIO(f.read())))
    for row in rows:
        row["shard"] = shard.name  # grouping by source shard relies on it
    return rows


class _ReadImagesFn(beam.DoFn):
    """A source shard -> its rows with the image bytes (`_image`, `_ext`), for scoring; the
    recorded scores and embeddings are dropped: the new model's replace them."""

    def process(self, shard: SourceShard):
        rows = {r["key"]: r for r in read_shard_rows(shard)}
        for sample in group_samples(shard_members(shard.tar)):
            row = rows.pop(sample["__key__"].rsplit("/", 1)[-1], None)
            ext = image_extension(sample)
            if row is None or ext is None:
                continue
            out = {k: v for k, v in row.items() if k not in EMBEDDING_FIELD_NAMES}
            yield {**out, "clip_score": None, "_image": sample[ext], "_ext": ext}
        for row in rows.values():  # in the parquet, not in the tar: counted, never written
            yield {**row, "_image": b"", "_ext": "jpg"}


class _ReadSampledFn(beam.DoFn):
    """(source shard, a few of its rows) -> those rows with their image bytes; the tar is read
    only as far as the last of them."""

    def __init__(self, tars: dict[str, str]):
        self.tars = tars

    def process(self, element):
        name, rows = element
        wanted = {r["key"]: r for r in rows}
        for sample in group_samples(shard_members(self.tars[name])):
            row = wanted.pop(sample["__key__"].rsplit("/", 1)[-1], None)
            ext = image_extension(sample)
            if row is not None and ext is not None:
                yield {**row, "_image": sample[ext], "_ext": ext}
            if not wanted:
                return
        yield from wanted.values()  # not in the tar: shown without an image


class ReadSampleImages(beam.PTransform):
    """A few rows of `source` (the audit gallery's sample) -> the same rows with their image
    bytes: only the source tars holding one are read."""

    def __init__(self, source: Source):
        super().__init__()
        self.tars = {s.name: s.tar for s in source.shards}

    def expand(self, rows):
        return (
            rows
            | "BySourceShard" >> beam.Map(lambda r: (r["shard"], r))
            | "GroupBySourceShard" >> beam.GroupByKey()
            | "ReadImages" >> beam.ParDo(_ReadSampledFn(self.tars))
        )


class ReadSource(beam.PTransform):
    """-> the source's result rows (`shard` = their source shard); with `images`, each also
    carries its image bytes (`_image`, `_ext`), for scoring."""

    def __init__(self, source: Source, images: bool = False):
        super().__init__()
        self.source, self.images = source, images

    def expand(self, pbegin):
        shards = (
            pbegin
            | "SourceShards" >> beam.Create(self.source.shards)
            | "Spread" >> beam.Reshuffle()
        )
        if self.images:
            return shards | "ReadImages" >> beam.ParDo(_ReadImagesFn())
        return shards | "ReadMetadata" >> beam.FlatMap(read_shard_rows)


def shuffle_order(key: str, seed: int) -> tuple[int, str]:
    """Where a sample falls in the seeded permutation (64-bit hash, key to break ties)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big"), key


def hash_range(order: tuple[int, str], num_shards: int) -> int:
    """The shard-sized range of the 64-bit hash space an order falls in (counted first)."""
    return (order[0] * num_shards) >> 64


def first_ranks(lo: int, hi: int, count: int, num_shards: int):
    """The first global ranks of shards 1..S-1, floor(j * count / S), that lie in [lo, hi)."""
    j = max(1, -(-lo * num_shards // count))  # ceil(lo * S / N): the first j reaching lo
    while j < num_shards:
        rank = j * count // num_shards
        if rank >= hi:
            return
        yield rank
        j += 1


def _boundaries_in_range(element, starts: dict, count: int, num_shards: int):
    """(range, orders) -> the order at each shard start (first rank) that the range holds."""
    index, orders = element
    orders = sorted(orders)
    lo = starts[index]
    for rank in first_ranks(lo, lo + len(orders), count, num_shards):
        yield orders[rank - lo]


def _range_starts(counts: dict) -> dict:
    """{range: samples in it} -> {range: global rank of its first sample}."""
    starts, total = {}, 0
    for index in sorted(counts):
        starts[index] = total
        total += counts[index]
    return starts


class PlaceSamples(beam.PTransform):
    """Kept rows -> (source shard, (target shard index, order, row)), and the shard count.

    Exactly balanced without a global sort: the hash space is cut into S ranges, counted;
    each range is sorted on its own (about N / S orders) to find the orders at which shards
    start (ranks floor(j N / S)); every row then finds its shard by bisection.
    """

    def __init__(self, seed: int, samples_per_shard: int):
        super().__init__()
        self.seed, self.samples_per_shard = seed, samples_per_shard

    def expand(self, rows):
        seed, per_shard = self.seed, self.samples_per_shard
        ordered = rows | "Order" >> beam.Map(lambda r: (shuffle_order(r["key"], seed), r))
        count = ordered | "Count" >> beam.combiners.Count.Globally()
        num_shards = count | "ShardCount" >> beam.Map(lambda n: max(1, math.ceil(n / per_shard)))
        s = beam.pvalue.AsSingleton(num_shards)
        in_ranges = ordered | "InRange" >> beam.Map(
            lambda kv, s: (hash_range(kv[0], s), kv[0]), s=s
        )
        starts = (
            in_ranges
            | "CountRanges" >> beam.combiners.Count.PerKey()
            | "RangeCounts" >> beam.combiners.ToDict()
            | "RangeStarts" >> beam.Map(_range_starts)
        )
        boundaries = (
            in_ranges
            | "GroupRange" >> beam.GroupByKey()
            | "ShardStarts"
            >> beam.FlatMap(
                _boundaries_in_range,
                starts=beam.pvalue.AsSingleton(starts),
                count=beam.pvalue.AsSingleton(count),
                num_shards=s,
            )
            | "AllStarts" >> beam.combiners.ToList()
            | "Sorted" >> beam.Map(sorted)
        )
        placed = ordered | "Place" >> beam.Map(
            lambda kv, b: (kv[1]["shard"], (bisect.bisect_right(b, kv[0]), kv[0], kv[1])),
            b=beam.pvalue.AsSingleton(boundaries),
        )
        return {"placed": placed, "num_shards": num_shards}


class _CopySamplesFn(beam.DoFn):
    """(source shard, placements) -> (target shard, row with the tar's own image bytes)."""

    def __init__(self, tars: dict[str, str]):
        self.tars = tars
        self.copied = Metrics.counter("reshard", "copied")

    def process(self, element):
        name, placements = element
        wanted = {row["key"]: (target, order, row) for target, order, row in placements}
        path = self.tars[name]
        for sample in group_samples(shard_members(path)):
            key = sample["__key__"].rsplit("/", 1)[-1]
            if key not in wanted:
                continue
            target, order, row = wanted.pop(key)
            ext = image_extension(sample)
            self.copied.inc()
            yield target, {**row, "_image": sample[ext], "_ext": ext, "_order": order}
        if wanted:  # the parquet and the tar disagree: the source changed or is damaged
            raise RuntimeError(
                f"{path} lacks {len(wanted)} recorded samples, e.g. {next(iter(wanted))}"
            )


class _WriteShardFn(beam.DoFn):
    def __init__(self, cfg: ShardConfig):
        self.cfg = cfg
        self.shards = Metrics.counter("reshard", "shards")

    def process(self, element, num_shards):
        index, rows = element
        rows = sorted(rows, key=lambda r: r["_order"])
        entry = write_shard(rows, shard_name(index, num_shards), self.cfg)
        self.shards.inc()
        yield beam.pvalue.TaggedOutput("shards", entry)
        for row in rows:
            yield public_row(row)


class Reshard(beam.PTransform):
    """Rows of `source` (with their `shard`) -> {"rows": written rows, "shards": ShardEntry per
    new shard}: placed (PlaceSamples), grouped by source shard to copy their tar members, then
    by new shard, written in shuffled order. Only the kept samples' bytes are read and moved."""

    def __init__(self, source: Source, cfg: ShardConfig, seed: int = 0):
        super().__init__()
        self.source, self.cfg, self.seed = source, cfg, seed

    def expand(self, rows):
        placement = rows | "PlaceSamples" >> PlaceSamples(self.seed, self.cfg.samples_per_shard)
        tars = {s.name: s.tar for s in self.source.shards}
        written = (
            placement["placed"]
            | "GroupBySource" >> beam.GroupByKey()
            | "CopySamples" >> beam.ParDo(_CopySamplesFn(tars))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard"
            >> beam.ParDo(
                _WriteShardFn(self.cfg),
                num_shards=beam.pvalue.AsSingleton(placement["num_shards"]),
            ).with_outputs("shards", main="rows")
        )
        return {"rows": written.rows, "shards": written.shards}
