"""The job graph translates to Beam's portable runner API (what Dataflow, Flink and Spark
receive), for every input kind and option that changes its shape; nothing is submitted."""

from __future__ import annotations

from dataclasses import replace

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.io.url_lists import resolve
from pipeline.jobs.curate import build
from pipeline.jobs.options import CurateOptions, config_from_options

DATAFLOW_FLAGS = [
    "--runner=DataflowRunner",
    "--project=my-project",
    "--region=us-central1",
    "--temp_location=gs://my-bucket/tmp",
    "--sdk_container_image=us-central1-docker.pkg.dev/my-project/images/webpairs-worker:latest",
    "--experiments=use_runner_v2",
]


@pytest.fixture
def urls(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(
        pa.table({"url": ["http://example.com/a.jpg"], "caption": ["a"], "w": [1]}), path
    )
    (tmp_path / "eval").mkdir()
    return path


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "--recipe",
            "recommended",
            "--languages",
            "en",
            "--stages",
            "filters,exact_dedupe,near_dedupe,caption_dedupe",
        ],
        ["--resume"],
        ["--save-additional-columns", "w", "--host-buckets", "0"],
    ],
)
def test_graph_translates_to_the_portable_runner_api(urls, tmp_path, extra):
    argv = ["--input", str(urls), "--output", "gs://my-bucket/out", *DATAFLOW_FLAGS, *extra]
    options = PipelineOptions(argv)
    cfg = config_from_options(options.view_as(CurateOptions))
    cfg = replace(cfg, read=resolve(cfg.read))
    p = beam.Pipeline(options=PipelineOptions([]))  # a graph only: no runner is constructed
    build(p, cfg, {"recipe": cfg.recipe.to_dict()})
    proto = p.to_runner_api()  # pickles every DoFn and side input, as a submission would
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert any(n.startswith("DownloadImages") for n in names) and any(
        n.startswith("WriteShards") for n in names
    )
    assert (
        beam.Pipeline.from_runner_api(proto, runner=None, options=PipelineOptions([])) is not None
    )


def test_decontamination_graph_translates(urls, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "eval" / "red.png")
    argv = [
        "--input",
        str(urls),
        "--output",
        "gs://b/out",
        "--decontaminate",
        str(tmp_path / "eval"),
        *DATAFLOW_FLAGS,
    ]
    cfg = config_from_options(PipelineOptions(argv).view_as(CurateOptions))
    p = beam.Pipeline(options=PipelineOptions([]))
    build(p, replace(cfg, read=resolve(cfg.read)), {})
    assert p.to_runner_api().components.transforms
