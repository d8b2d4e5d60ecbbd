"""Beam jobs on a dask.distributed cluster: Beam's DaskRunner with a translation that runs
every transform our jobs use, the way DirectRunner does.

    python -m pipeline.curate --input urls.parquet --output out/ --runner dask --dask-workers 2
    --runner pipeline.runners.dask_runner.DaskRunner --dask_client_address tcp://HOST:8786

Beam 2.77's own DaskRunner (`apache_beam.runners.dask.dask_runner.DaskRunner`) translates
Create, ParDo, GroupByKey and Flatten to dask bags, but for a job like ours it is wrong:
it computes only the last transform's bag (a job's other sinks never run), hands every tagged
output of a DoFn to every consumer, drops what a DoFn emits in `finish_bundle` (BatchElements'
last batch, file writers), leaves `Read` (ReadFromParquet, ReadFromText) untranslated, runs
`setup` per partition and returns no counters. This subclass keeps its options
(`--dask_client_address`, `--dask_npartitions`) and replaces the translation (dask_graph.py;
the tasks run dask_tasks.py):

- one dask task graph for the whole job, built by hand: every sink is computed, work that
  several consumers share runs once;
- a partition goes through a ParDo as a bundle, with Beam's DoFnRunner (start, process, finish
  bundle, side inputs, tagged outputs kept apart); DoFn instances are set up once per worker
  process and job and reused, as a Beam worker does; ParDos that only feed each other run in
  one task (fusion);
- GroupByKey is a hash shuffle on the key's deterministic Beam encoding (Python's `hash` of a
  str differs between processes) into as many partitions as the largest source has, and at
  least one per worker thread; CombinePerKey is lifted (a partial combine per partition, then
  the shuffle), so CombineGlobally does not gather every row in one place;
- Read splits its source on the launcher (16 MiB bundles), a task reads each bundle;
  Reshuffle spreads a collection over the cluster's threads;
- a side input is gathered once and sent to the tasks that read it;
- counters come back (`metrics()`), once per task that dask kept.

Not supported, refused before anything runs with the stage's name: stateful DoFns and timers,
splittable DoFns, windowing other than the global window, unbounded collections, and any other
primitive transform (TestStream, cross-language transforms).

A worker that dies takes its tasks and the data it held with it; dask's scheduler recomputes
them on the other workers (up to `distributed.scheduler.allowed-failures` times per task), so
the DoFns a job runs must be safe to re-run: ours write files to a temporary name and rename
them, and the crawl log tolerates a row logged twice.
"""

from __future__ import annotations

import logging

from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.runners.runner import PipelineResult, PipelineState

from pipeline.runners import dask_tasks as tasks
from pipeline.runners.dask_graph import UnsupportedOnDask, translate

__all__ = ["DaskJobResult", "DaskRunner", "UnsupportedOnDask"]

logger = logging.getLogger(__name__)


class DaskJobResult(PipelineResult):
    """The running job: `wait_until_finish()` raises a task's error (with its stage's name)."""

    def __init__(self, client, job: str, sinks: list):
        super().__init__(PipelineState.RUNNING)
        self._client, self._job, self._sinks = client, job, sinks
        self._metrics = DirectMetrics()

    def wait_until_finish(self, duration=None):
        if PipelineState.is_terminal(self._state):
            return self._state
        from distributed import wait

        try:
            if duration is not None:
                wait(self._sinks, timeout=duration / 1000)
            self._client.gather(self._sinks)
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            if PipelineState.is_terminal(self._state):
                self._close()
        return self._state

    def _close(self) -> None:
        """The job's DoFns torn down on the workers, its counters collected (once per task
        that dask kept: a task rerun elsewhere after its worker died counts once)."""
        try:
            by_worker = self._client.run(tasks.finish_job, self._job)
        except Exception as e:  # a worker gone: its DoFns went with it
            logger.warning("collecting the job's counters from the workers: %s", e)
            by_worker = {}
        per_task: dict = {}
        for reports in by_worker.values():
            per_task.update(reports)
        for i, updates in enumerate(u for task in per_task.values() for u in task):
            self._metrics.commit_physical(i, updates)
            self._metrics.commit_logical(i, updates)
        self._client.close()

    def cancel(self):
        self._client.cancel(self._sinks)
        self._close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self):
        return self._metrics


class DaskRunner(beam_dask.DaskRunner):
    """Runs a pipeline on the dask.distributed scheduler at `--dask_client_address`."""

    def run_pipeline(self, pipeline, options):
        from distributed import Client

        dask_options = options.view_as(beam_dask.DaskOptions)
        # (not DaskOptions.timeout: its option name is webpairs' --timeout, the download deadline)
        client = Client(dask_options.address)
        try:
            threads = max(1, sum(client.nthreads().values()))
            graph = translate(pipeline, threads, dask_options.npartitions)
            sinks = graph.sinks()
            futures = client.get(graph.tasks, sinks, sync=False)
        except BaseException:
            client.close()
            raise
        logger.info(
            "running on dask at %s: %d tasks, %d partitions per shuffle",
            client.scheduler.address,
            len(graph.tasks),
            graph.shuffle_partitions,
        )
        return DaskJobResult(client, graph.job, futures)
