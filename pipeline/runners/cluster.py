"""The dask.distributed cluster a job runs on with `--runner dask`: an existing one
(`--dask-address tcp://HOST:8786`) or a local one started for the job and closed after it
(`--dask-workers N` processes, one per core by default), checked before anything runs: every
worker imports the same Beam and this project's code, and sees the output folder.

    with dask_cluster(options, "out/"):        # sets --dask_client_address for the runner
        p.run().wait_until_finish()

Nothing here imports dask until a job asks for it: the options parse without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import uuid

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.io.layout import join_path
from pipeline.io.url_lists import InputError

logger = logging.getLogger(__name__)

DASK_RUNNER = "pipeline.runners.dask_runner.DaskRunner"
# what --runner may say to mean it (Beam's own DaskRunner cannot run these jobs: see dask_runner)
DASK_NAMES = ("dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner")
WORKER_TIMEOUT = 60  # seconds to wait for a first worker to join


class DaskClusterOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("dask (--runner dask)")
        g.add_argument(
            "--dask-address",
            dest="dask_address",
            default=None,
            help="scheduler of an existing dask cluster, tcp://HOST:PORT",
        )
        g.add_argument(
            "--dask-workers",
            dest="dask_workers",
            type=int,
            default=None,
            help="start a local cluster of N worker processes for the job (default: one per core)",
        )


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def uses_dask(options: PipelineOptions) -> bool:
    return options.view_as(StandardOptions).runner == DASK_RUNNER


def resolve_runner(options: PipelineOptions, argv: list[str]) -> None:
    """`--runner dask` (or DaskRunner) -> this project's Dask runner; the dask flags checked."""
    std = options.view_as(StandardOptions)
    opts = options.view_as(DaskClusterOptions)
    if std.runner and std.runner.lower() in DASK_NAMES:
        std.runner = DASK_RUNNER
    if not uses_dask(options):
        if opts.dask_address or opts.dask_workers is not None:
            raise InputError("--dask-address and --dask-workers need --runner dask")
        return
    if importlib.util.find_spec("distributed") is None:
        raise InputError(
            "--runner dask needs dask.distributed: pip install 'webpairs[dask]' (or 'dask[distributed]')"
        )
    if any(a.split("=")[0] == "--dask_connection_timeout" for a in argv):
        # Beam stores it under the name of webpairs' --timeout (the download deadline)
        raise InputError(
            "--dask_connection_timeout would change --timeout; set "
            "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT instead"
        )
    if opts.dask_address and opts.dask_workers is not None:
        raise InputError("--dask-address joins a cluster, --dask-workers starts one: pass one")
    if opts.dask_workers is not None and opts.dask_workers < 1:
        raise InputError(f"--dask-workers must be at least 1, got {opts.dask_workers}")
    import pipeline.runners.dask_runner  # noqa: F401  (registers Beam's --dask_* options)


def _worker_view(probe: str) -> dict:
    """Runs on each worker: what it has installed and whether it sees the output folder."""
    import apache_beam
    from apache_beam.io.filesystems import FileSystems as fs

    return {"beam": apache_beam.__version__, "sees_output": fs.exists(probe)}


def check_workers(client, output: str) -> None:
    """One clear line, before anything runs, when a worker cannot run the job."""
    import apache_beam

    address = client.scheduler.address
    try:
        client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
    except TimeoutError:
        raise InputError(f"no dask worker joined {address} within {WORKER_TIMEOUT} s") from None
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    probe = join_path(output, f"_dask_probe_{uuid.uuid4().hex}")
    with FileSystems.create(probe) as f:
        f.write(b"")
    try:
        views = client.run(_worker_view, probe, on_error="return")
    finally:
        FileSystems.delete([probe])
    for worker, view in sorted(views.items()):
        missing = re.search(r"No module named '([\w.]+)'", str(view))
        if isinstance(view, BaseException) and missing:  # the check itself is project code
            raise InputError(
                f"dask worker {worker} cannot import {missing.group(1)!r}: run the workers from "
                "the project's image (docker/pipeline.Dockerfile) or install webpairs there"
            )
        if isinstance(view, BaseException):
            raise InputError(f"dask worker {worker} failed a check: {view!r}")
        if view["beam"] != apache_beam.__version__:
            raise InputError(
                f"dask worker {worker} has apache-beam {view['beam']}, this launcher "
                f"{apache_beam.__version__}: use the same image for both"
            )
        if not view["sees_output"]:
            raise InputError(
                f"dask worker {worker} cannot see --output {output}: put it on a file system "
                "every worker mounts, or on gs:// / s3://"
            )


# The workers' statistical profiler calls sys._current_frames() every 10 ms; on CPython 3.11
# up to 3.11.8, a garbage collection inside that call can deadlock the worker against a thread
# being started (python/cpython#106883, dask/distributed#8616), and the crawl starts threads:
# a job hung this way at 3000 URLs (bench/RESULTS-crawl.md). Our local workers run without it.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False} if sys.version_info < (3, 12) else {}


@contextlib.contextmanager
def dask_cluster(options: PipelineOptions, output: str):
    """The job's cluster, checked; `--dask_client_address` set for the runner. A local cluster
    started here is closed on the way out."""
    import dask
    from apache_beam.runners.dask.dask_runner import DaskOptions
    from distributed import Client, LocalCluster

    # the scheduler's and nannies' INFO lines (importing distributed sets INFO) would drown
    # the job's; its warnings and errors still show
    logging.getLogger("distributed").setLevel(logging.WARNING)
    opts = options.view_as(DaskClusterOptions)
    address = opts.dask_address or options.view_as(DaskOptions).address
    cluster = None
    if address is None:
        workers = opts.dask_workers or usable_cores()
        logger.info("starting a local dask cluster of %d worker processes", workers)
        quiet = {"distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "warning"}
        quiet.update(WORKER_CONFIG)
        with dask.config.set(quiet):  # the workers' INFO lines would drown the job's
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",  # (None does not turn it off) any free port
                silence_logs=logging.WARNING,
            )
        address = cluster.scheduler_address
    try:
        try:
            client = Client(address)  # waits distributed.comm.timeouts.connect (30 s)
        except OSError as e:
            raise InputError(f"cannot reach the dask scheduler at {address}: {e}") from None
        with client:
            check_workers(client, output)
        options.view_as(DaskOptions).address = address
        yield address
    finally:
        if cluster is not None:
            cluster.close()
