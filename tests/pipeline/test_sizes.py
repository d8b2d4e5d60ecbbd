"""`sizes.json` beside the tars: OpenCLIP's webdataset loader counts an epoch from it (the
number of samples per tar file name) instead of needing --train-num-samples."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.jobs.curate import main
from schemas import Manifest


def openclip_dataset_size(shards: list[str]) -> int:
    """What open_clip_train.data.get_dataset_size does with a shard list: read sizes.json in
    the first shard's folder and add up the entries of the listed tars' file names."""
    with open(os.path.join(os.path.dirname(shards[0]), "sizes.json")) as f:
        sizes = json.load(f)
    return sum(int(sizes[os.path.basename(s)]) for s in shards)


def test_sizes_json_counts_every_shard_like_the_manifest(site, tmp_path):
    paths = ["/img/coffee.jpg", "/img/chelsea.png", "/img/astronaut.webp", "/img/rocket.jpg"]
    rows = [{"url": site.url(p), "caption": p} for p in paths]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "urls.parquet"), "--output", str(out), "--recipe", "none"]
    assert main([*args, "--allow-networks", "127.0.0.1/32", "--samples-per-shard", "1"]) == 0
    manifest = Manifest.from_json((out / "manifest.json").read_text())
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sizes == {e.url.rsplit("/", 1)[1]: e.nsamples for e in manifest.shardlist}
    tars = sorted(str(out / e.url) for e in manifest.shardlist)
    assert openclip_dataset_size(tars) == manifest.total_samples == len(paths)
