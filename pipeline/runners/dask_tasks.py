"""What the Dask runner's tasks run on the workers: a partition (a list of elements) through a
DoFn, the two halves of a GroupByKey shuffle, a Read bundle, and the small picks between.
Plain functions over lists, importable without a cluster (dask_runner.py builds the graph).

    run_chain(["a", "b"], "job-id", [[pickler.dumps(step), "Stage", []]], MAIN)  # -> outputs
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import uuid

from apache_beam.coders.coders import DeterministicFastPrimitivesCoder, FastPrimitivesCoder
from apache_beam.internal import pickler
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.runners.common import DoFnRunner, Receiver
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.counters import CounterFactory

_IDLE: dict[tuple[str, str], list] = {}  # (job, payload digest) -> set-up DoFns, idle
_METRICS: dict[str, dict] = {}  # job -> {task key: [MetricUpdates of its steps]}
_IDLE_LOCK = threading.Lock()

# what a chain task returns: its last step's main output, each output by tag, the main
# output's length (a sink), or (an int) the main output split into that many hash buckets
MAIN, TAGS, COUNT = "main", "tags", "count"


def _borrow(job: str, payload: bytes):
    """-> (pool key, step, fresh): a set-up DoFn of this job's step when the process has one
    idle (a Beam worker reuses DoFn instances across bundles too), else a new one (setup() to
    run). Instances never outlive their job: a later job's setup() reads its own files."""
    key = (job, hashlib.sha256(payload).hexdigest())
    with _IDLE_LOCK:
        idle = _IDLE.get(key)
        if idle:
            return key, idle.pop(), False
    return key, pickler.loads(payload), True


def _give_back(key: tuple[str, str], step) -> None:
    with _IDLE_LOCK:
        _IDLE.setdefault(key, []).append(step)


def finish_job(job: str) -> dict:
    """The job is over: its idle DoFns torn down and dropped; -> {task key: [MetricUpdates]}
    of the tasks this process ran for it."""
    with _IDLE_LOCK:
        keys = [k for k in _IDLE if k[0] == job]
        steps = [step for k in keys for step in _IDLE.pop(k)]
        metrics = _METRICS.pop(job, {})
    for step in steps:
        try:
            step[0].teardown()
        except Exception:  # teardown is best-effort, as on every Beam runner
            pass
    return metrics


class _ListReceiver(Receiver):
    def __init__(self):
        self.values = []

    def receive(self, windowed_value):
        self.values.append(windowed_value.value)


class _Receivers(dict):
    """tag -> receiver, made on first output (None: the main output)."""

    def __missing__(self, tag):
        receiver = self[tag] = _ListReceiver()
        return receiver


def _side_map(spec, values: list) -> SideInputMap:
    view_class, view_options = spec
    return SideInputMap(view_class, view_options, [GlobalWindows.windowed_value(v) for v in values])


def run_bundle(elements: list, job: str, payload: bytes, label: str, side_values: list):
    """One partition through one ParDo, as a bundle: start, process each, finish (what
    finish_bundle emits included). `payload`: the pickled (DoFn, args, kwargs, side input
    specs, windowing); `side_values`: each side input's elements, whole.
    -> ({tag: [values]}, the bundle's MetricUpdates)"""
    pool_key, step, fresh = _borrow(job, payload)
    fn, args, kwargs, side_specs, windowing = step
    receivers = _Receivers()
    container = MetricsContainer(label)
    sampler = statesampler.StateSampler("", CounterFactory())
    statesampler.set_current_tracker(sampler)  # Metrics.counter(...).inc() lands in `container`
    runner = None
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            runner = DoFnRunner(
                fn,
                args,
                kwargs,
                [_side_map(s, v) for s, v in zip(side_specs, side_values)],
                windowing,
                tagged_receivers=receivers,
                step_name=label,
            )
            if fresh:
                runner.setup()
            runner.start()
            for element in elements:
                runner.process(GlobalWindows.windowed_value(element))
            runner.finish()
    except BaseException:
        if runner is not None:  # this instance is in an unknown state: not reused
            try:
                runner.teardown()
            except Exception:  # the bundle's error is the one to report
                pass
        raise
    finally:
        statesampler.set_current_tracker(None)
    _give_back(pool_key, step)
    return {tag: r.values for tag, r in receivers.items()}, container.get_cumulative()


def _task_key() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().get_current_task())
    except (ImportError, ValueError):  # not on a dask worker: each call its own task
        return uuid.uuid4().hex


def run_chain(elements: list, job: str, steps: list, mode):
    """A partition through fused ParDos, each step [payload, label, side values], each
    reading the previous one's main output. The counters of every step are kept in this
    process under the task's key (finish_job hands them over), so a task that dask runs again
    after losing its worker counts once. -> what `mode` says (MAIN, TAGS, COUNT, buckets)."""
    updates = []
    outputs: dict = {None: elements}
    for payload, label, side_values in steps:
        outputs, metrics = run_bundle(outputs.get(None, []), job, payload, label, side_values)
        updates.append(metrics)
    with _IDLE_LOCK:
        _METRICS.setdefault(job, {})[_task_key()] = updates
    main = outputs.get(None, [])
    if mode == MAIN:
        return main
    if mode == TAGS:
        return outputs
    if mode == COUNT:
        return len(main)
    return hash_split(main, mode)


def output_of(outputs: dict, tag) -> list:
    return outputs.get(tag, [])


_KEY_CODER = DeterministicFastPrimitivesCoder(FastPrimitivesCoder(), "GroupByKey")


def key_bucket(key, buckets: int) -> int:
    """The same bucket for an equal key in every process: a hash of its deterministic Beam
    encoding (Python's own hash of a str differs between processes)."""
    digest = hashlib.blake2b(_KEY_CODER.encode(key), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def hash_split(elements: list, buckets: int) -> list[list]:
    """(key, value) pairs -> `buckets` lists, by key: the map side of a GroupByKey."""
    out: list[list] = [[] for _ in range(buckets)]
    for kv in elements:
        out[key_bucket(kv[0], buckets)].append(kv)
    return out


def group_bucket(bucket: int, splits: list[list[list]]) -> list[tuple]:
    """Bucket `bucket` of every input partition's split -> [(key, [values])], keys in order
    of first arrival (the input partitions in order: the same on every run)."""
    groups: dict = {}
    for split in splits:
        for k, v in split[bucket]:
            groups.setdefault(k, []).append(v)
    return list(groups.items())


def pieces(elements: list, n: int) -> list[list]:
    """A partition cut into `n` contiguous pieces of nearly equal length (Reshuffle)."""
    size, extra = divmod(len(elements), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(elements[start:end])
        start = end
    return out


def piece(parts: list[list], i: int) -> list:
    return parts[i]


def unpickle(data: bytes):
    return pickler.loads(data)


def read_bundles(data: bytes) -> list:
    """Pickled source bundles (a split of a Read's source) -> their records."""
    out = []
    for b in pickler.loads(data):
        tracker = b.source.get_range_tracker(b.start_position, b.stop_position)
        out.extend(b.source.read(tracker))
    return out


def concat(parts: list[list]) -> list:
    return list(itertools.chain.from_iterable(parts))


def count(elements: list) -> int:
    return len(elements)
