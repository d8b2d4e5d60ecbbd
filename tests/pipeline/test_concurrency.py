"""ProcessBatchFn: batches of elements through worker processes, in a real Beam pipeline;
and where the curate job turns it on by default."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.crawl.concurrency import ProcessBatchFn
from pipeline.io.url_lists import InputError
from pipeline.jobs.options import decode_processes
from pipeline.runners.cluster import usable_cores


def square_batch(values: list[int], offset: int = 0) -> list[tuple[int, int, int]]:
    """Runs in a worker process: (value, value squared + offset, pid, batch size)."""
    return [(v, v * v + offset, os.getpid(), len(values)) for v in values]


def fail_on_seven(values: list[int]) -> list[int]:
    if 7 in values:
        raise ValueError("seven is not allowed")
    return values


def _run(fn, values, **kw):
    p = beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"]))
    out = p | beam.Create(values) | beam.ParDo(ProcessBatchFn(fn, **kw))
    return p, out


def test_batches_run_in_other_processes_and_every_element_comes_back():
    values = list(range(1, 41)) + [-1, -2, -3]
    p, out = _run(
        partial(square_batch, offset=1), values, processes=2, batch=4, bypass=lambda v: v < 0
    )
    here = os.getpid()

    def check(got):
        passed = sorted(g for g in got if isinstance(g, int))
        mapped = sorted(g for g in got if isinstance(g, tuple))
        assert passed == [-3, -2, -1]  # bypassed: emitted as they are, never sent anywhere
        assert [(v, sq) for v, sq, _, _ in mapped] == [(v, v * v + 1) for v in range(1, 41)]
        assert all(pid != here for _, _, pid, _ in mapped)
        assert all(1 <= n <= 4 for _, _, _, n in mapped)

    assert_that(out, check)
    p.run().wait_until_finish()


def test_a_batch_is_sent_once_it_weighs_enough():
    # 6 units each, at most 10 a batch: the second element tips it over, so batches of 2
    p, out = _run(
        square_batch, list(range(9)), processes=2, batch=8, weigh=lambda v: 6, max_batch_weight=10
    )

    def check(got):
        assert sorted(v for v, *_ in got) == list(range(9))
        assert max(n for *_, n in got) == 2

    assert_that(out, check)
    p.run().wait_until_finish()


def test_a_failing_batch_fails_the_pipeline_with_its_error():
    p, _ = _run(fail_on_seven, list(range(20)), processes=2, batch=3)
    with pytest.raises(Exception, match="seven is not allowed"):
        p.run().wait_until_finish()


def test_an_empty_input_submits_nothing():
    p, out = _run(square_batch, [], processes=2)
    assert_that(out, equal_to([]))
    p.run().wait_until_finish()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], usable_cores()),  # the in-process DirectRunner: one GIL for the whole job
        (["--runner", "DirectRunner"], usable_cores()),
        (["--direct_running_mode=multi_threading"], usable_cores()),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 0),
        (["--runner", "dask"], 0),
        (["--runner", "DataflowRunner"], 0),
        (["--decode-processes", "3"], 3),
        (["--decode-processes", "0"], 0),
        (["--direct_running_mode=multi_processing", "--decode-processes", "2"], 2),
    ],
)
def test_decode_processes_default_follows_the_runner(flags, expected):
    assert decode_processes(PipelineOptions(flags)) == expected


def test_negative_decode_processes_is_one_clear_error():
    with pytest.raises(InputError, match="--decode-processes must be 0 or more"):
        decode_processes(PipelineOptions(["--decode-processes", "-1"]))


def _python(script: str, from_stdin: bool = False) -> subprocess.CompletedProcess:
    """Runs `script` in a fresh interpreter at the repository root (`python -` or `-c`); fails
    the test with its stderr when it fails."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-"] if from_stdin else [sys.executable, "-c", script],
        input=script if from_stdin else None,
        capture_output=True,
        text=True,
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_a_job_read_from_stdin_falls_back_to_threads_and_finishes(tmp_path):
    # worker processes re-create the main module; "<stdin>" is no file they could read
    script = (
        "from tests.pipeline.test_concurrency import _run, square_batch\n"
        "p, out = _run(square_batch, list(range(20)), processes=2)\n"
        "p.run().wait_until_finish()\n"
        "print('finished')\n"
    )
    done = _python(script, from_stdin=True)
    assert "finished" in done.stdout
    assert "running in 2 threads instead" in done.stderr


def test_the_forkserver_starts_before_the_pool_with_what_its_workers_need():
    # in a fresh process: the forkserver is one per process, and pytest's may be running
    script = (
        "import multiprocessing.forkserver as fs, os\n"
        "from functools import partial\n"
        "from pipeline.crawl.concurrency import ProcessBatchFn, start_forkserver\n"
        "from pipeline.crawl.images import ImageConfig, decode_rows\n"
        "fn = partial(decode_rows, cfg=ImageConfig())\n"
        "assert start_forkserver(fn)\n"
        "server = fs._forkserver\n"
        "assert server._forkserver_pid is not None, 'not started'\n"
        "assert 'pipeline.crawl.images' in server._preload_modules\n"
        "pid = server._forkserver_pid\n"
        "pool = ProcessBatchFn(os.getpid, 2)\n"
        "pool.setup()  # the pool forks its workers from the server already running\n"
        "assert server._forkserver_pid == pid\n"
        "assert pool._pool.submit(os.getpid).result() != os.getpid()\n"
        "print('ok')\n"
    )
    assert "ok" in _python(script).stdout
