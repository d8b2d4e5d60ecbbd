"""Kill a multi_processing run with a real signal, resume it, get an uninterrupted run's shards."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.jobs.curate import main
from tests.conftest import encode, serve


@pytest.fixture(scope="module")
def many_images(photos) -> dict[str, tuple[bytes, str]]:
    """60 distinct real images: tiles of the bundled photos."""
    files = {}
    for name, im in sorted(photos.items()):
        rgb = im.convert("RGB")
        w, h = rgb.size
        for i in range(8):
            x, y = (i % 4) * w // 4, (i // 4) * h // 2
            tile = rgb.crop((x, y, x + w // 4, y + h // 2)).resize((160, 160), Image.LANCZOS)
            files[f"/img/{name}-{i}.jpg"] = (encode(tile, "JPEG", quality=90), "image/jpeg")
    return dict(list(files.items())[:60])


def _digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "shards").glob("*.tar"))
    }


def _args(inp: Path, out: Path) -> list[str]:
    return [
        "--input", str(inp), "--output", str(out), "--image-size", "64", "--samples-per-shard", "10",
        "--allow-networks", "127.0.0.1/32", "--threads", "2", "--staging-flush-rows", "3", "--recipe", "none",
    ]  # fmt: skip


def test_killed_run_resumes_to_the_same_shards_without_refetching(many_images, tmp_path):
    with serve(many_images) as site:
        site.delay = 0.2
        rows = [{"url": site.url(p), "caption": p} for p in many_images]
        inp = tmp_path / "urls.parquet"
        pq.write_table(pa.Table.from_pylist(rows), inp)

        reference = tmp_path / "reference"
        assert main(_args(inp, reference)) == 0
        site.hits.clear()

        out = tmp_path / "out"
        mp = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.curate", *_args(inp, out), *mp],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while len(list((out / "_staging").glob("*.parquet"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes, mid-crawl
        proc.wait(timeout=30)
        assert not (out / "manifest.json").exists()
        staged = pa.concat_tables(
            [pq.read_table(p) for p in (out / "_staging").glob("*.parquet")]
        ).to_pylist()
        staged_paths = {r["url"][len(site.base) :] for r in staged}
        assert 0 < len(staged_paths) < len(many_images)
        hits_at_kill = dict(site.hits)

        assert main(_args(inp, out)) == 2  # an unfinished run is not clobbered silently
        assert main([*_args(inp, out), "--resume", *mp]) == 0

    assert _digests(out) == _digests(reference)
    assert all(
        site.hits[p] == hits_at_kill[p] for p in staged_paths
    )  # logged URLs were not fetched again
    assert sum(site.hits.values()) < 2 * len(many_images)
    assert not (out / "_staging").exists()
    assert main([*_args(inp, out), "--resume"]) == 2  # a finished run has nothing to resume
