"""What the Dask runner's tasks run, on plain lists in this process (no cluster): a partition
through fused DoFns as a bundle, the two halves of a shuffle, and the key hash that every
worker process must agree on."""

from __future__ import annotations

import subprocess
import sys

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.transforms.window import GlobalWindows

from pipeline.runners import dask_tasks as tasks

GLOBAL = beam.Windowing(GlobalWindows())


def step(fn: beam.DoFn, *args) -> bytes:
    """A ParDo step as the graph pickles it: (DoFn, args, kwargs, side input specs, windowing),
    side inputs among `args` made placeholders by Beam's own ParDo."""
    pardo = beam.ParDo(fn, *args)
    specs = [(type(s), s._view_options()) for s in pardo.side_inputs]
    return pickler.dumps((pardo.fn, pardo.args, pardo.kwargs, specs, GLOBAL))


class _Tag(beam.DoFn):
    def process(self, x, limit):
        if x < limit:
            yield x
        else:
            yield beam.pvalue.TaggedOutput("big", x)


class _CountInFinish(beam.DoFn):
    def start_bundle(self):
        self.n = 0

    def process(self, x):
        self.n += 1
        yield x * 10

    def finish_bundle(self):
        yield GlobalWindows.windowed_value(("seen", self.n))


class _Double(beam.DoFn):
    def process(self, x):
        yield x * 2


def test_a_chain_runs_each_step_as_a_bundle_and_keeps_tags_apart():
    limit = beam.pvalue.AsSingleton(beam.Pipeline() | beam.Create([5]))  # a graph, never run
    double, tag = step(_Double()), step(_Tag(), limit)
    out = tasks.run_chain(
        [1, 2, 3, 4], "job", [[double, "Double", []], [tag, "Tag", [[5]]]], "tags"
    )
    assert out == {None: [2, 4], "big": [6, 8]}
    counted = tasks.run_chain([1, 2, 3], "job", [[step(_CountInFinish()), "Count", []]], "main")
    assert counted == [10, 20, 30, ("seen", 3)]  # what finish_bundle emits is kept


def test_a_chain_ends_as_a_count_or_a_hash_split():
    double = step(_Double())
    assert tasks.run_chain([1, 2, 3], "job", [[double, "D", []]], tasks.COUNT) == 3
    buckets = tasks.run_chain([1, 2, 3], "job", [[step(_Pair()), "P", []]], 4)
    assert sorted(kv for b in buckets for kv in b) == [(1, "a"), (2, "a"), (3, "a")]
    assert all(tasks.key_bucket(k, 4) == i for i, b in enumerate(buckets) for k, _ in b)


class _Pair(beam.DoFn):
    def process(self, x):
        yield x, "a"


def test_group_bucket_gathers_one_bucket_of_every_split_in_arrival_order():
    splits = [tasks.hash_split([("a", 1), ("b", 2), ("a", 3)], 2), tasks.hash_split([("a", 4)], 2)]
    groups = dict(kv for j in range(2) for kv in tasks.group_bucket(j, splits))
    assert groups == {"a": [1, 3, 4], "b": [2]}


def test_pieces_cut_a_partition_into_near_equal_contiguous_parts():
    assert tasks.pieces(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert tasks.pieces([], 2) == [[], []]


KEYS = ["astronaut", ("host.example", 3), b"\x00bytes", 12345, None]
BUCKETS = (
    "from pipeline.runners.dask_tasks import key_bucket; "
    f"print([key_bucket(k, 7) for k in {KEYS!r}], [hash(k) % 7 for k in {KEYS[:2]!r}])"
)


def test_a_key_lands_in_the_same_bucket_in_every_process():
    """Workers started without a common PYTHONHASHSEED (a `dask worker` by hand) hash a str
    differently; the bucket must not depend on it."""
    seen = [
        subprocess.run(
            [sys.executable, "-c", BUCKETS],
            env={"PYTHONHASHSEED": seed, "PATH": "", "PYTHONPATH": ":".join(sys.path)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("] [")
        for seed in ("1", "2")
    ]
    assert seen[0][0] == seen[1][0]  # our buckets agree
    assert seen[0][1] != seen[1][1]  # Python's hash would not have


def _words_pipeline(folder, files: int) -> beam.Pipeline:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(files):
        pq.write_table(pa.table({"word": [f"w{i}", "x"]}), folder / f"{i:03d}.parquet")
    p = beam.Pipeline()  # translated only, never run
    _ = (
        p
        | "Read" >> beam.io.ReadFromParquet(str(folder / "*.parquet"))
        | "Pair" >> beam.Map(lambda r: (r["word"], 1))
        | "Group" >> beam.GroupByKey()
    )
    return p


def test_a_source_of_many_files_is_read_in_at_most_max_partitions(tmp_path, monkeypatch):
    from pipeline.runners import dask_graph

    monkeypatch.setattr(dask_graph, "MAX_PARTITIONS", 4)
    graph = dask_graph.translate(_words_pipeline(tmp_path, 10), threads=2)
    (read,) = graph.reads.values()
    assert len(read) == 4 and sum(len(c) for c in read) == 10  # every file, in 4 tasks
    assert graph.shuffle_partitions == 4


def test_a_shuffle_too_big_for_one_step_is_refused_by_name(tmp_path, monkeypatch):
    import pytest

    from pipeline.runners import dask_graph

    monkeypatch.setattr(dask_graph, "MAX_SHUFFLE_LINKS", 10)
    with pytest.raises(dask_graph.UnsupportedOnDask, match=r"stage 'Group': a shuffle of 4 into 4"):
        dask_graph.translate(_words_pipeline(tmp_path, 4), threads=4)
