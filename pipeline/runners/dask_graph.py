"""The Dask runner's translation: a Beam pipeline (overrides applied) -> one dask task graph,
built by hand. pipeline/runners/dask_runner.py says what it does and why; dask_tasks.py holds
what the tasks run.

    graph = translate(pipeline, threads=8)   # graph.tasks: {key: task}; graph.sinks(): keys
"""

from __future__ import annotations

import collections
import itertools
import typing as t
import uuid

import apache_beam as beam
from apache_beam import pvalue, typehints
from apache_beam.internal import pickler
from apache_beam.pipeline import PipelineVisitor, PTransformOverride
from apache_beam.runners.common import DoFnSignature
from apache_beam.runners.dask import overrides as beam_overrides
from apache_beam.runners.dask.overrides import _Create, _Flatten, _Reshuffle
from apache_beam.transforms.combiners import LiftedCombinePerKey
from apache_beam.transforms.core import Impulse
from apache_beam.transforms.window import GlobalWindows

from pipeline.runners import dask_tasks as tasks

K = t.TypeVar("K")
V = t.TypeVar("V")

BUNDLE_BYTES = 16 << 20  # Read: the source is split into bundles of about this size
# at most this many partitions for a source (a Read's bundles are grouped, a Create's values
# chunked), and so for a shuffle unless the cluster has more threads: a one-step shuffle
# links each of its input partitions to each output partition
MAX_PARTITIONS = 1024
MAX_SHUFFLE_LINKS = 20_000_000  # more links than this in one shuffle: refused
INLINE_PAYLOAD = 64 << 10  # a pickled DoFn up to this size travels inside each of its tasks


class UnsupportedOnDask(ValueError):
    """A transform this runner cannot run; raised before the job starts."""


def _refuse(node, what: str) -> t.NoReturn:
    raise UnsupportedOnDask(f"stage {node.full_label!r}: {what} cannot run on the Dask runner")


@typehints.with_input_types(tuple[K, V])
@typehints.with_output_types(tuple[K, t.Iterable[V]])
class _GroupByKey(beam.PTransform):
    """GroupByKey in the global window: a shuffle (no window reification needed)."""

    def expand(self, pcoll):
        return pvalue.PCollection.from_(pcoll)

    def infer_output_type(self, input_type):
        key_type, value_type = typehints.trivial_inference.key_value_types(input_type)
        return typehints.KV[key_type, typehints.Iterable[value_type]]


class _Read(beam_overrides._Read):
    """Beam's stand-in for Read, with the global window its output lies in."""

    def get_windowing(self, inputs):
        return beam.Windowing(GlobalWindows())


class _Replace(PTransformOverride):
    """Replaces a transform of exactly `cls` with `make(transform)`."""

    def __init__(self, cls, make, when=lambda applied: True):
        self.cls, self.make, self.when = cls, make, when

    def matches(self, applied):
        return applied.transform.__class__ is self.cls and self.when(applied)

    def get_replacement_transform_for_applied_ptransform(self, applied):
        return self.make(applied.transform)


def _lifted(transform):
    try:
        return LiftedCombinePerKey(transform.fn, transform.args, transform.kwargs)
    except NotImplementedError:  # 10+ side inputs: combined after a plain GroupByKey
        return transform


def overrides() -> list[PTransformOverride]:
    """Combine lifting first: it expands into ParDos and a GroupByKey that the rest replace."""
    return [
        _Replace(beam.CombinePerKey, _lifted, lambda a: a.inputs[0].windowing.is_default()),
        _Replace(beam.Create, lambda tr: _Create(tr.values)),
        _Replace(beam.Reshuffle, lambda tr: _Reshuffle()),
        _Replace(beam.io.Read, lambda tr: _Read(tr.source)),
        _Replace(beam.GroupByKey, lambda tr: _GroupByKey()),
        _Replace(beam.Flatten, lambda tr: _Flatten()),
    ]


class _Graph(PipelineVisitor):
    """The pipeline's primitive transforms -> one dask task graph: each PCollection is a list
    of partition keys, each partition a task whose result is a list of elements.

    Built by hand (dask's legacy tuple tasks), not with dask.bag: every key is explicit, so
    work shared by several consumers is one task, and building stays linear in the number of
    transforms. Literals reach tasks pickled (bytes), never as bare tuples that dask would read
    as tasks or keys.

    Fusion, as Beam runners do it: a ParDo whose input is a single-output ParDo's output that
    nothing else reads runs in the same task (a chain), and so does the map side of a
    GroupByKey and the count of a sink; a chain ends at a multi-output ParDo (picks per tag),
    a GroupByKey, a Flatten or a collection read twice."""

    def __init__(self, threads: int, survey: _Survey, shuffle_partitions: int):
        self.threads = threads  # Reshuffle spreads a collection over at least this many
        self.reads = survey.reads  # Read node -> its source split into bundles
        self.uses = survey.uses  # PCollection -> transforms that read it (main or side input)
        self.shuffle_partitions = shuffle_partitions  # every GroupByKey's output
        self.job = uuid.uuid4().hex[:8]
        self.tasks: dict[tuple, tuple | bytes] = {}
        self.pcolls: dict[pvalue.PCollection, list[tuple]] = {}
        self.chains: dict[pvalue.PCollection, list[tuple]] = {}  # open: more steps may join
        self.sides: dict[pvalue.PCollection, tuple] = {}  # side input -> its gathered key
        self.consumed: set[pvalue.PCollection] = set()
        self._names = itertools.count()

    def _name(self, node, what: str) -> str:
        return f"{what}-{node.full_label[-60:]}-{self.job}-{next(self._names)}"

    def _add(self, name: str, tasks: list) -> list[tuple]:
        keys = [(name, i) for i in range(len(tasks))]
        self.tasks.update(zip(keys, tasks))
        return keys

    def _fusable(self, pcoll) -> list[tuple] | None:
        """The keys of `pcoll`'s chain when one more step may join it (only it reads pcoll)."""
        if pcoll in self.chains and self.uses.get(pcoll, 0) == 1:
            return self.chains.pop(pcoll)
        return None

    def _end_chain(self, keys: list[tuple], mode) -> None:
        for k in keys:
            run, inp, job, steps, _ = self.tasks[k]
            self.tasks[k] = (run, inp, job, steps, mode)

    def sinks(self) -> list[tuple]:
        """The count of every collection nobody reads, per partition: what the job computes."""
        keys = []
        for pcoll, parts in self.pcolls.items():
            if pcoll in self.consumed:
                continue
            if pcoll in self.chains:
                self._end_chain(self.chains.pop(pcoll), tasks.COUNT)
                keys += parts
            else:
                keys += self._add(f"count-{parts[0][0]}", [(tasks.count, k) for k in parts])
        return keys

    def _inputs(self, node) -> list[pvalue.PCollection]:
        pcolls = [p for p in node.inputs if isinstance(p, pvalue.PCollection)]
        self.consumed.update(pcolls)
        return pcolls

    def visit_transform(self, node):
        if not all(out.is_bounded for out in node.outputs.values()):
            _refuse(node, "an unbounded collection")
        transform = node.transform
        inputs = self._inputs(node)
        if isinstance(transform, beam.ParDo):
            return self._pardo(node, transform, inputs[0])
        if isinstance(transform, _Create):
            parts = self._create(node, list(transform.values))
        elif isinstance(transform, Impulse):
            parts = self._create(node, [b""])
        elif isinstance(transform, _Read):
            parts = self._add(
                self._name(node, "read"),
                [(tasks.read_bundles, pickler.dumps(c)) for c in self.reads[node]] or [[]],
            )
        elif isinstance(transform, _Reshuffle):
            parts = self._spread(node, self.pcolls[inputs[0]])
        elif isinstance(transform, _GroupByKey):
            parts = self._group(node, inputs[0])
        elif isinstance(transform, _Flatten):
            parts = [k for p in inputs for k in self.pcolls[p]] or self._create(node, [])
        else:
            _refuse(node, f"the primitive transform {type(transform).__name__}")
        (out,) = node.outputs.values()
        self.pcolls[out] = parts

    def _create(self, node, values: list) -> list[tuple]:
        parts = chunks(values, create_partitions(len(values)))
        return self._add(
            self._name(node, "create"), [(tasks.unpickle, pickler.dumps(c)) for c in parts]
        )

    def _spread(self, node, parts: list[tuple]) -> list[tuple]:
        """At least `threads` partitions: each input cut into contiguous pieces."""
        if len(parts) >= self.threads:
            return parts
        per = -(-self.threads // len(parts))
        cut = self._add(self._name(node, "cut"), [(tasks.pieces, k, per) for k in parts])
        return self._add(
            self._name(node, "piece"), [(tasks.piece, c, i) for c in cut for i in range(per)]
        )

    def _group(self, node, pcoll) -> list[tuple]:
        """A GroupByKey: each partition split by key hash (in its chain's task when it has
        one), then bucket j of every split grouped."""
        buckets = self.shuffle_partitions
        links = len(self.pcolls[pcoll]) * buckets
        if links > MAX_SHUFFLE_LINKS:
            _refuse(
                node,
                f"a shuffle of {len(self.pcolls[pcoll])} into {buckets} partitions "
                f"({links:,} task links)",
            )
        splits = self._fusable(pcoll)
        if splits is not None:
            self._end_chain(splits, buckets)
        else:
            splits = self._add(
                self._name(node, "split"),
                [(tasks.hash_split, k, buckets) for k in self.pcolls[pcoll]],
            )
        return self._add(
            self._name(node, "group"), [(tasks.group_bucket, j, splits) for j in range(buckets)]
        )

    def _side(self, node, pcoll) -> tuple:
        """A side input gathered whole, once, for every task that reads it."""
        if pcoll not in self.sides:
            gather = (tasks.concat, self.pcolls[pcoll])
            (self.sides[pcoll],) = self._add(self._name(node, "side"), [gather])
        return self.sides[pcoll]

    def _pardo(self, node, transform, pcoll) -> None:
        for out in node.outputs.values():  # WindowInto is the ParDo that sets windows
            if not isinstance(out.windowing.windowfn, GlobalWindows):
                _refuse(node, f"windowing ({type(out.windowing.windowfn).__name__})")
        signature = DoFnSignature(transform.fn)
        if signature.is_stateful_dofn():
            _refuse(node, "a stateful DoFn (state or timers)")
        if signature.is_splittable_dofn():
            _refuse(node, "a splittable DoFn")
        sides = list(node.side_inputs)
        self.consumed.update(si.pvalue for si in sides)
        spec = (
            transform.fn,
            transform.args,
            transform.kwargs,
            [(type(si), si._view_options()) for si in sides],
            beam.Windowing(GlobalWindows()),
        )
        payload = pickler.dumps(spec)
        if len(payload) > INLINE_PAYLOAD:  # sent once to each worker, not inside every task
            (payload,) = self._add(self._name(node, "dofn"), [payload])
        step = [payload, node.full_label, [self._side(node, si.pvalue) for si in sides]]
        multi = len(node.outputs) > 1
        mode = tasks.TAGS if multi else tasks.MAIN
        keys = self._fusable(pcoll)
        if keys is not None:
            for k in keys:
                run, inp, job, steps, _ = self.tasks[k]
                self.tasks[k] = (run, inp, job, [*steps, step], mode)
        else:
            keys = self._add(
                self._name(node, "pardo"),
                [(tasks.run_chain, k, self.job, [step], mode) for k in self.pcolls[pcoll]],
            )
        if not multi:
            (out,) = node.outputs.values()
            self.pcolls[out] = self.chains[out] = keys
            return
        for tag, out in node.outputs.items():
            self.pcolls[out] = self._add(
                self._name(node, f"out.{tag}"), [(tasks.output_of, k, _tag(tag)) for k in keys]
            )


def _tag(tag):
    return None if tag in (None, "None") else tag


def create_partitions(n_values: int) -> int:
    """A Create's partitions: one per value up to MAX_PARTITIONS (its values are files or
    shards to read, mostly: one task each)."""
    return max(1, min(n_values, MAX_PARTITIONS))


def chunks(values: list, n: int) -> list[list]:
    """`values` in `n` contiguous chunks of nearly equal length."""
    size, extra = divmod(len(values), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [values[a:b] for a, b in zip(bounds, bounds[1:])]


class _Survey(PipelineVisitor):
    """First pass: every Read split into bundles, the largest source's partition count, and
    how many transforms read each collection (what may be fused)."""

    def __init__(self):
        self.reads: dict = {}
        self.largest = 1
        self.uses: collections.Counter = collections.Counter()

    def visit_transform(self, node):
        for p in node.inputs:
            if isinstance(p, pvalue.PCollection):
                self.uses[p] += 1
        for si in node.side_inputs:
            self.uses[si.pvalue] += 1
        if isinstance(node.transform, _Read):
            bundles = list(node.transform.source.split(desired_bundle_size=BUNDLE_BYTES))
            n = max(1, min(len(bundles), MAX_PARTITIONS))
            self.reads[node] = chunks(bundles, n)  # a task reads each chunk of bundles
            self.largest = max(self.largest, n)
        elif isinstance(node.transform, _Create):
            self.largest = max(self.largest, create_partitions(len(node.transform.values)))


def translate(pipeline: beam.Pipeline, threads: int, shuffle_partitions: int | None = None):
    """Overrides applied and the graph translated; raises UnsupportedOnDask naming the first
    stage that cannot run. A GroupByKey's output has `shuffle_partitions` partitions, by
    default as many as the largest source has (at most MAX_PARTITIONS) and at least one per
    worker thread: the shuffles keep the sources' granularity and every thread busy."""
    pipeline.replace_all(overrides())
    survey = _Survey()
    pipeline.visit(survey)
    graph = _Graph(threads, survey, shuffle_partitions or max(threads, survey.largest))
    pipeline.visit(graph)
    return graph
