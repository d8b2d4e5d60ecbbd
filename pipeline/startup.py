"""What a job's process does before the job: Apache Beam imported without touching the logging
setup, and the imports kept from the cyclic collector.

    with job_imports():                 # pipeline/curate.py, webpairs_cli.py
        from pipeline.jobs.curate import main

Importing Beam without its GCP extra logs a warning through the root logger ("apitools not
found, and bigquery client libraries are not available ..."): noise on every run of a job that
reads no BigQuery. Logged before any logging setup, it also makes `logging.warning` call
`basicConfig()`, which leaves the root logger a WARNING handler: the job's own logging setup
(`job_main`, INFO) then saw a configured logger and stepped aside, and the progress lines of a
job whose stderr is not a terminal (logged at INFO) were lost. So that one message is dropped
in every process that imports `pipeline` (the decode workers' forkserver too), and a root
handler added during the job's imports is removed again.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

BEAM_GCP_NOTICE = "apitools not found, and bigquery client libraries are not available"


class _DropBeamGcpNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(BEAM_GCP_NOTICE)


def drop_beam_gcp_notice() -> None:
    """Drops Beam's GCP-extra notice from the root logger (once per process)."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropBeamGcpNotice) for f in root.filters):
        root.addFilter(_DropBeamGcpNotice())


@contextmanager
def job_imports() -> Iterator[None]:
    """Imports a job's modules: a root handler they add (`logging.basicConfig` called as a side
    effect of a warning) is removed after them, so that the job's own logging setup applies.
    The collector is off meanwhile, and the imported objects are frozen after: they live as long
    as the process, and the collector would run ~250 times on the way, twice over all of them,
    for nothing (0.07-0.15 s of 0.6-1.2 s of imports, bench/build_costs.py); frozen, it never
    scans them again. Objects that are freed are still freed: only the cycle search skips them.
    (Beam's notice itself is dropped by the filter `pipeline/__init__.py` installs.)"""
    root = logging.getLogger()
    handlers = list(root.handlers)
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
