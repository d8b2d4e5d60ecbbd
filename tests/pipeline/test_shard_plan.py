"""Shard writing. A row's shard is known before its image is downloaded: the shard count is
sized from the rows the job sets out to crawl (as img2dataset sizes its shards), so the image
bytes go from the crawl straight into the shard writer's shuffle, and no other stage reads
them. The tars are the bytes tarfile writes, at less than half the cost."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.shards import assign_shard, shard_name, write_tar
from pipeline.io.url_lists import resolve
from pipeline.jobs.curate import build, main
from pipeline.jobs.options import CurateOptions, config_from_options
from pipeline.jobs.shell import job_options

GOOD = ["/img/coffee.jpg", "/img/chelsea.png", "/img/astronaut.webp", "/img/rocket.jpg"]
MISSING = ["/missing.jpg", "/missing.jpg?a", "/missing.jpg?b", "/missing.jpg?c"]


def _urls(site, tmp_path):
    rows = [{"url": site.url(p), "caption": f"a photo {i}"} for i, p in enumerate(GOOD + MISSING)]
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _run(site, tmp_path, name, *extra) -> list[dict]:
    out = tmp_path / name
    args = ["--input", str(_urls(site, tmp_path)), "--output", str(out), "--recipe", "none"]
    args += ["--allow-networks", "127.0.0.1/32", "--retries", "0", "--samples-per-shard", "2"]
    assert main([*args, *extra]) == 0
    rows = [
        r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()
    ]
    assert len(rows) == len(GOOD)  # the 404s failed, counted in stats (test_curate)
    return rows


def test_shard_count_is_planned_from_the_rows_to_download(site, tmp_path):
    rows = _run(site, tmp_path, "planned")
    keys = [r["key"] for r in rows]
    # 8 rows to download, 2 a shard: 4 shards, though 4 rows only were written (2 shards' worth)
    assert any(assign_shard(k, 4) != assign_shard(k, 2) for k in keys), "keys cannot tell"
    assert {r["key"]: r["shard"] for r in rows} == {
        k: shard_name(assign_shard(k, 4), 4) for k in keys
    }


def test_a_byte_cap_sizes_shards_from_what_was_written(site, tmp_path):
    rows = _run(site, tmp_path, "capped", "--bytes-per-shard", str(1 << 40))
    keys = [r["key"] for r in rows]
    assert {r["key"]: r["shard"] for r in rows} == {
        k: shard_name(assign_shard(k, 2), 2) for k in keys
    }


def _graph(tmp_path, *extra) -> dict[str, beam.pipeline.AppliedPTransform]:
    pq.write_table(
        pa.Table.from_pylist([{"url": "http://127.0.0.1:9/a.jpg", "caption": "a"}]),
        tmp_path / "one.parquet",
    )
    options = job_options(
        ["--input", str(tmp_path / "one.parquet"), "--output", str(tmp_path / "o"), *extra]
    )
    cfg = config_from_options(options.view_as(CurateOptions))
    cfg = replace(cfg, read=resolve(cfg.read))
    p = beam.Pipeline(options=options)
    build(p, cfg, {})
    nodes = {}

    class Collect(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            nodes[node.full_label] = node

    p.visit(Collect())
    return nodes


def _upstream(node) -> set[str]:
    """Every leaf transform `node` waits on, through its main and side inputs."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        for pc in [*n.main_inputs.values(), *(si.pvalue for si in n.side_inputs)]:
            producer = pc.producer
            if producer is not None and producer.full_label not in seen:
                seen.add(producer.full_label)
                todo.append(producer)
    return seen


@pytest.mark.parametrize("recipe", ["none", "default"])
def test_the_image_bytes_go_from_the_crawl_to_the_shard_writer_alone(tmp_path, recipe):
    nodes = _graph(tmp_path, "--recipe", recipe)
    shard_of_row = nodes["WriteShards/ShardOfRow"]
    waits_on = _upstream(shard_of_row)
    # the shard count it reads is known before any download: no curation, no crawl behind it
    (count,) = shard_of_row.side_inputs
    before = _upstream(count.pvalue.producer) | {count.pvalue.producer.full_label}
    assert "CountPlanned" in " ".join(before)
    assert not [t for t in before if t.startswith(("DownloadImages", "DecodeResize", "Curation"))]
    assert any(t.startswith("DecodeResize") for t in waits_on)
    # the rows with their bytes: read by the light rows curation sees and by the writer only
    (rows,) = shard_of_row.main_inputs.values()
    readers = sorted(
        label
        for label, n in nodes.items()
        if rows in n.main_inputs.values() or rows in [si.pvalue for si in n.side_inputs]
    )
    assert readers == ["LightRows", "WriteShards/ShardOfRow"]


def _tarfile_bytes(samples: list[dict]) -> bytes:
    """What the shard writer wrote before member_header: tarfile's own "w|" PAX writer, as
    bench/tar_writer.py runs it."""
    spec = importlib.util.spec_from_file_location(
        "tar_writer", Path(__file__).parents[2] / "bench" / "tar_writer.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    buf = io.BytesIO()
    bench.tarfile_tar(samples, buf)
    return buf.getvalue()


def test_tar_bytes_are_tarfiles_own(tmp_path):
    rng = random.Random(0)
    samples = [
        {
            "key": key,
            "_image": rng.randbytes(size),
            "_ext": "jpg",
            "caption": caption,
            "url": f"http://example.com/{key}",
        }
        for key, size, caption in [
            ("0" * 40, 0, None),
            ("a1b2c3" * 10, 511, "a caption"),
            ("f" * 64, 512, "légende, 説明"),  # non-ASCII text inside: still a plain member
            ("k" * 96, 513, "the longest plain name: 96 + '.jpg' = 100 bytes"),
            ("k" * 97, 70_000, "one byte longer: a PAX header first"),
            ("clé", 1000, "a non-ASCII name: a PAX header first"),
        ]
    ]
    out = io.BytesIO()
    size, digest = write_tar(samples, out)
    assert out.getvalue() == _tarfile_bytes(samples)
    assert (size, digest) == (len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest())
    # and tarfile reads every member back
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = [m.name for m in tar.getmembers()]
    assert names == [f"{s['key']}.{e}" for s in samples for e in ("jpg", "json", "txt")]
