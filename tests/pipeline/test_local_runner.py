"""The local default runs on Beam's FnApiRunner at once: no detour through Prism, which Beam's
DirectRunner first tries to download from GitHub at run time (pipeline/runners/local.py)."""

from __future__ import annotations

import logging

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from pipeline.jobs.curate import main
from pipeline.jobs.shell import job_options
from pipeline.runners.local import new_pipeline

DIRECT_LOG = "apache_beam.runners.direct.direct_runner"


@pytest.mark.parametrize(
    "flags, local",
    [
        ([], True),
        (["--runner", "DirectRunner"], True),
        (["--runner", "DirectRunner", "--direct_running_mode", "multi_processing"], True),
        (["--runner", "PrismRunner"], False),
        (["--runner", "dask"], False),
    ],
)
def test_which_runner_a_job_gets(flags, local):
    p = new_pipeline(job_options(flags))
    assert isinstance(p.runner, FnApiRunner) is local


def _prism_tries(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == DIRECT_LOG and "Prism" in r.getMessage()
    ]


def test_beams_own_direct_runner_tries_prism_first(caplog):
    """What the job avoids: the control for the test below (Beam's DirectRunner as it is)."""
    caplog.set_level(logging.INFO, logger=DIRECT_LOG)
    with beam.Pipeline(options=job_options([])) as p:
        _ = p | beam.Create([1, 2]) | beam.Map(lambda x: x)
    assert _prism_tries(caplog)


def test_a_curate_job_never_tries_prism(site, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=DIRECT_LOG)
    rows = [{"url": site.url("/img/coffee.jpg"), "caption": "coffee"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    args = ["--input", str(tmp_path / "urls.parquet"), "--output", str(tmp_path / "out")]
    assert main([*args, "--recipe", "none", "--allow-networks", "127.0.0.1/32"]) == 0
    assert (tmp_path / "out" / "manifest.json").exists()
    assert _prism_tries(caplog) == []
