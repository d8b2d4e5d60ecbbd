"""A DoFn that keeps many elements in flight: `fn` runs in a thread pool, results stream out.

Downloads are I/O-bound and Pillow releases the GIL while decoding, so one worker process
overlaps hundreds of requests and several decodes. Results leave in completion order,
which is harmless because every later stage is order-independent (shards sort by key).

    fetched = rows | "Fetch" >> beam.ParDo(ThreadedMapFn(fetch_row, threads=64))
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import queue
import sys
import types
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

logger = logging.getLogger(__name__)


class ThreadedMapFn(beam.DoFn):
    """Applies `fn(element) -> output` with up to `threads` calls running at once.

    `fn` must handle its own failures (return a failed row); `setup_fn`, if given, is called
    once per DoFn instance in `setup()` and its result is passed as `fn(element, resource)`
    (a connection pool, say); `teardown()` calls the resource's `close()` if it has one.
    `bypass(element)` true means: emit the element unchanged. Outputs are result rows; their
    status/reason are counted as Beam metrics of `stage` (in the bundle thread: Beam's metric
    containers are thread-local).
    """

    def __init__(
        self,
        fn: Callable,
        threads: int,
        setup_fn: Callable | None = None,
        bypass: Callable | None = None,
        max_in_flight: int | None = None,
        stage: str = "map",
    ):
        self.fn = fn
        self.threads = max(1, threads)
        self.setup_fn = setup_fn
        self.bypass = bypass
        self.max_in_flight = max_in_flight or 2 * self.threads
        self.stage = stage

    def setup(self):
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.stage)
        self._resource = self.setup_fn() if self.setup_fn else None
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._in_flight = 0

    def start_bundle(self):
        self._in_flight = 0

    def _run(self, element, window, timestamp):
        try:
            out = self.fn(element, self._resource) if self.setup_fn else self.fn(element)
            self._done.put((WindowedValue(out, timestamp, [window]), None))
        except BaseException as e:  # surfaced in the bundle thread, failing the bundle loudly
            self._done.put((None, e))

    def _take(self, block: bool):
        while self._in_flight:
            try:
                value, error = self._done.get(block=block)
            except queue.Empty:
                return
            self._in_flight -= 1
            if error is not None:
                raise error
            self._count(value.value)
            yield value
            block = False

    def process(self, element, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        if self.bypass is not None and self.bypass(element):
            yield element
            return
        self._pool.submit(self._run, element, window, timestamp)
        self._in_flight += 1
        yield from self._take(block=self._in_flight >= self.max_in_flight)

    def finish_bundle(self):
        while self._in_flight:
            yield from self._take(block=True)

    def _count(self, row) -> None:
        count_row(self.stage, row)

    def teardown(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(getattr(self, "_resource", None), "close", None)
        if close is not None:  # a Crawler's connection pools and resolver threads
            close()


def count_row(stage: str, row) -> None:
    """A result row's status (and status.reason) as Beam counters of `stage`."""
    if isinstance(row, dict) and "status" in row:
        Metrics.counter(stage, row["status"]).inc()
        if row.get("reason"):
            Metrics.counter(stage, f"{row['status']}.{row['reason']}").inc()


def process_context(preload: tuple[str, ...] = ()):
    """Worker processes start from a fresh server process (forkserver), never forked from a
    job whose threads may hold locks; spawn where forkserver does not exist (Windows).
    `preload`: modules the forkserver imports once, before it forks any worker (takes
    effect when this process starts its forkserver, i.e. for its first pool)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    if preload:
        ctx.set_forkserver_preload(list(preload))
    return ctx


def _main_module() -> tuple[types.ModuleType | None, str | None, str | None]:
    """(__main__, the name it was run as with -m, its file): what multiprocessing re-runs in
    every spawned or forkserver worker (by name, else from the file; neither: nothing)."""
    main = sys.modules.get("__main__")
    by_name = getattr(getattr(main, "__spec__", None), "name", None)
    return main, by_name, getattr(main, "__file__", None)


def _preload_for(fn: Callable) -> tuple[str, ...]:
    """What a worker imports before its first task: fn's module, and when multiprocessing
    re-runs the main module in every worker (`python -m NAME`, a script), the modules that
    main module imported, so that re-running it costs the workers nothing: the forkserver
    imports them once. (Not the main module itself: runpy warns when it finds it imported.)"""
    modules = [getattr(fn, "func", fn).__module__]
    main, by_name, path = _main_module()
    if main is None or not (by_name or path):
        return tuple(modules)  # nothing is re-run (an interactive session, `python -c`)
    for value in list(vars(main).values()):
        name = value.__name__ if isinstance(value, types.ModuleType) else None
        name = name or getattr(value, "__module__", None)
        if isinstance(name, str) and name in sys.modules and name not in ("__main__", by_name):
            modules.append(name)
    return tuple(dict.fromkeys(modules))


def start_forkserver(fn: Callable) -> bool:
    """Starts now the forkserver that a ProcessBatchFn of `fn` forks its workers from (it is one
    per process, started by the first pool otherwise): it imports what the workers need, about
    a CPU-second, on a core this process leaves idle while it builds the job, instead of while
    the first downloads wait for it. -> whether it started (or runs already)."""
    if "forkserver" not in multiprocessing.get_all_start_methods() or not workers_can_start():
        return False
    process_context(_preload_for(fn))
    multiprocessing.forkserver.ensure_running()
    return True


def workers_can_start() -> bool:
    """False when worker processes cannot re-create the main module, as multiprocessing
    makes them: a script read from stdin (`python - < job.py`) names a file that does not exist."""
    _, by_name, path = _main_module()
    return path is None or by_name is not None or os.path.exists(path)


# the output type declared: Beam would infer it from the bytecode at every build
@beam.typehints.with_output_types(beam.typehints.Any)
class ProcessBatchFn(beam.DoFn):
    """Applies `fn(list of elements) -> list of outputs` (same length, same order) in a pool
    of `processes` worker processes, `batch` elements per call, so that CPU-bound Python and
    GIL-holding C work (image encoding) leaves the process that runs the pipeline.

    For one-process runners (DirectRunner in_memory), where every stage shares one GIL; on
    process-parallel runners (multi_processing, Dask, Dataflow) a pool per worker would only
    oversubscribe the cores. `fn` must be importable by name (a module-level function, or a
    partial of one) and handle its own failures; `bypass(element)` true means: emit the
    element unchanged, without sending it anywhere. A batch is sent when it holds `batch`
    elements or, with `weigh(element)` (bytes, say), `max_batch_weight`; at most two batches
    per process are in flight, which bounds the memory held. Outputs leave in completion order of
    their batch; result rows are counted as Beam metrics of `stage`, as ThreadedMapFn does.
    """

    def __init__(
        self,
        fn: Callable,
        processes: int,
        batch: int = 8,
        bypass: Callable | None = None,
        stage: str = "map",
        weigh: Callable | None = None,
        max_batch_weight: int = 16 * 1024 * 1024,
    ):
        self.fn = fn
        self.processes = max(1, processes)
        self.batch = max(1, batch)
        self.bypass = bypass
        self.stage = stage
        self.weigh = weigh
        self.max_batch_weight = max_batch_weight

    def setup(self):
        if workers_can_start():
            context = process_context(_preload_for(self.fn))
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context)
            for _ in range(self.processes):  # start the workers while downloads begin; a
                self._pool.submit(int)  # builtin no-op: importing nothing in the worker
        else:
            logger.warning(
                "%s: the main module cannot be re-imported by worker processes (%s); "
                "running in %d threads instead",
                self.stage,
                _main_module()[2],
                self.processes,
            )
            self._pool = ThreadPoolExecutor(self.processes, thread_name_prefix=self.stage)
        self._max_in_flight = 2 * self.processes

    def start_bundle(self):
        self._buffer: list = []
        self._meta: list = []
        self._weight = 0
        self._pending: collections.deque = collections.deque()

    def _submit(self):
        future = self._pool.submit(self.fn, self._buffer)
        self._pending.append((future, self._meta))
        self._buffer, self._meta, self._weight = [], [], 0

    def _take(self, block: bool):
        if block and self._pending:
            wait([f for f, _ in self._pending], return_when=FIRST_COMPLETED)
        still = collections.deque()
        while self._pending:
            future, meta = self._pending.popleft()
            if not future.done():
                still.append((future, meta))
                continue
            outputs = future.result()  # a worker's crash (BrokenProcessPool) fails the bundle
            for out, (window, timestamp) in zip(outputs, meta, strict=True):
                count_row(self.stage, out)
                yield WindowedValue(out, timestamp, [window])
        self._pending = still

    def process(self, element, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        if self.bypass is not None and self.bypass(element):
            yield element
            return
        self._buffer.append(element)
        self._meta.append((window, timestamp))
        self._weight += self.weigh(element) if self.weigh is not None else 0
        if len(self._buffer) >= self.batch or self._weight >= self.max_batch_weight:
            self._submit()
            yield from self._take(block=len(self._pending) >= self._max_in_flight)

    def finish_bundle(self):
        if self._buffer:
            self._submit()
        while self._pending:
            yield from self._take(block=True)

    def teardown(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
