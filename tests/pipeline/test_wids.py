"""The manifest a crawl writes opens as a wids shard index (`wids.ShardListDataset`, from the
`wids` distribution: webdataset 1.x no longer ships the module): the same samples, in shard
order, as the tars hold."""

from __future__ import annotations

import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import wids

from pipeline.jobs.curate import main
from schemas import Manifest


def tar_samples(path) -> list[tuple[str, bytes, bytes]]:
    """(key, jpg, txt) per sample of a shard, read with tarfile."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return [(key, s["jpg"], s["txt"]) for key, s in members.items()]


def test_manifest_json_opens_as_a_wids_shard_index(site, tmp_path):
    paths = ["/img/coffee.jpg", "/img/chelsea.png", "/img/astronaut.webp", "/img/rocket.jpg"]
    pq.write_table(
        pa.Table.from_pylist([{"url": site.url(p), "caption": p} for p in paths]),
        tmp_path / "urls.parquet",
    )
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "urls.parquet"), "--output", str(out), "--recipe", "none"]
    assert main([*args, "--allow-networks", "127.0.0.1/32", "--samples-per-shard", "2"]) == 0
    manifest = Manifest.from_json((out / "manifest.json").read_text())
    # two shards by the key hash (keys follow the server's port, so both may fall in one):
    # relative shard URLs are resolved against the manifest's folder either way
    assert 1 <= len(manifest.shardlist) <= 2

    dataset = wids.ShardListDataset(
        str(out / "manifest.json"), cache_dir=str(tmp_path / "wids-cache"), transformations=[]
    )
    expected = [s for e in manifest.shardlist for s in tar_samples(out / e.url)]
    assert len(dataset) == manifest.total_samples == len(paths)
    got = [dataset[i] for i in range(len(dataset))]
    assert [(s["__key__"], s[".jpg"].read(), s[".txt"].read()) for s in got] == expected
    assert sorted(caption.decode() for _, _, caption in expected) == sorted(paths)
