"""A job's start-up: the options' views made once (pipeline/jobs/shell.py JobOptions), and the
entry point's imports kept from the cyclic collector (pipeline/curate.py)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import (
    PipelineOptions,
    StandardOptions,
    TypeOptions,
)

from pipeline.jobs.shell import JobOptions, job_options
from pipeline.runners.local import new_pipeline


def test_a_view_is_made_once_and_shares_the_values():
    options = job_options(["--runner", "DirectRunner", "--type_check_strictness", "ALL_REQUIRED"])
    types = options.view_as(TypeOptions)
    assert options.view_as(TypeOptions) is types
    assert types.type_check_strictness == "ALL_REQUIRED"
    # a value set through one view is seen through the other views and the options themselves
    types.pipeline_type_check = False
    assert options.view_as(TypeOptions).pipeline_type_check is False
    assert options.get_all_options()["pipeline_type_check"] is False
    options.view_as(StandardOptions).streaming = True
    assert options.view_as(StandardOptions).streaming is True


def test_options_pickle_without_their_views_and_read_the_same():
    options = job_options(["--runner", "DirectRunner", "--no_pipeline_type_check"])
    options.view_as(TypeOptions)
    back = pickle.loads(pickle.dumps(options))
    assert isinstance(back, JobOptions)
    assert "_views" not in back.__dict__
    assert back.get_all_options() == options.get_all_options()
    assert back.view_as(TypeOptions).pipeline_type_check is False


def test_building_a_graph_parses_each_options_class_once(monkeypatch):
    """Beam asks for a TypeOptions view at every step it applies; each view of a plain
    PipelineOptions builds a parser and parses the flags again."""
    built = []
    original = TypeOptions._add_argparse_args.__func__

    def counted(cls, parser):
        built.append(cls)
        original(cls, parser)

    monkeypatch.setattr(TypeOptions, "_add_argparse_args", classmethod(counted))

    def graph(options, steps):
        built.clear()
        p = new_pipeline(options)
        pcoll = p | beam.Create([1, 2, 3])
        for i in range(steps):
            pcoll = pcoll | f"Add{i}" >> beam.Map(lambda x: x + 1)
        return len(built)

    assert graph(PipelineOptions([]), 20) > 20  # the control: a view per step
    # the view, and the parser of every class that Beam's get_all_options builds
    assert graph(job_options([]), 20) == graph(job_options([]), 40) <= 2


def _fresh(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_entry_point_freezes_its_imports_and_collects_again():
    enabled, frozen = _fresh(
        "import gc, pipeline.curate; print(gc.isenabled(), gc.get_freeze_count())"
    )
    assert enabled == "True"
    assert int(frozen) > 50_000  # Beam's modules and ours, past the collector's scans


def test_the_entry_point_leaves_a_disabled_collector_disabled():
    (enabled,) = _fresh("import gc; gc.disable(); import pipeline.curate; print(gc.isenabled())")
    assert enabled == "False"


def test_the_entry_point_leaves_logging_to_the_job():
    """Beam's import logs a notice about its GCP extra through the root logger, which
    configures logging as a side effect; the entry point drops the notice and that setup."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging, pipeline.curate; print(len(logging.getLogger().handlers))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]
    assert "apitools" not in done.stderr


def test_a_job_logs_its_progress_when_stderr_is_not_a_terminal(tmp_path):
    urls = tmp_path / "urls.parquet"
    pq.write_table(
        pa.table({"url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(3)], "caption": ["a"] * 3}),
        urls,
    )
    cmd = [sys.executable, "-m", "pipeline.curate", "--input", str(urls)]
    done = subprocess.run(
        [*cmd, "--output", str(tmp_path / "out"), "--progress-every", "0.2"],
        capture_output=True,  # stderr a pipe: progress is logged, not drawn on a terminal
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("input 3; written 0")
    assert "INFO pipeline.jobs.curate: curating" in done.stderr
    assert "webpairs curate: 3 rows finished in" in done.stderr  # the final tally, logged
    assert "apitools" not in done.stderr  # nor in the decode workers' forkserver
