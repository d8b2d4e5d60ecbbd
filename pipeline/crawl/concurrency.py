"""A DoFn that keeps many elements in flight: `fn` runs in a thread pool, results stream out.

Downloads are I/O-bound and Pillow releases the GIL while decoding, so one worker process
overlaps hundreds of requests and several decodes. Results leave in completion order,
which is harmless because every later stage is order-independent (shards sort by key).

    fetched = rows | "Fetch" >> beam.ParDo(ThreadedMapFn(fetch_row, threads=64))
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue


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
        if isinstance(row, dict) and "status" in row:
            Metrics.counter(self.stage, row["status"]).inc()
            if row.get("reason"):
                Metrics.counter(self.stage, f"{row['status']}.{row['reason']}").inc()

    def teardown(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(getattr(self, "_resource", None), "close", None)
        if close is not None:  # a Crawler's connection pools and resolver threads
            close()
