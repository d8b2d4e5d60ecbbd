import functools
import http.server
import threading
from collections import Counter

import pytest

from trainer.configs import DataConfig
from trainer.data import shard_weights
from trainer.position import ShardPlan
from trainer.sources import DataError, Shard, iter_shard, resolve_sources, total_samples


def test_brace_pattern_glob_and_manifest_give_the_same_shards(digit_shards, digit_manifest):
    folder = digit_shards[0].parent
    brace = resolve_sources([f"{folder}/{{00000..00003}}.tar"])
    globbed = resolve_sources([f"{folder}/*.tar"])
    manifest = resolve_sources([str(digit_manifest)])
    assert [s.url for s in brace] == [s.url for s in globbed] == [str(p) for p in digit_shards]
    assert [s.url for s in manifest] == [str(p) for p in digit_shards]
    assert total_samples(manifest) == 64 and total_samples(brace) is None


def test_a_sizes_json_beside_the_shards_counts_them(digit_shards, tmp_path):
    """OpenCLIP's count file, which `webpairs curate` writes beside its tars."""
    import json
    import shutil

    for shard in digit_shards:
        shutil.copy(shard, tmp_path / shard.name)
    (tmp_path / "sizes.json").write_text(json.dumps({p.name: 16 for p in digit_shards[:3]}))
    assert total_samples(resolve_sources([f"{tmp_path}/{{00000..00002}}.tar"])) == 48
    everything = resolve_sources([f"{tmp_path}/*.tar"])  # the fourth is not listed: no total
    assert total_samples(everything) is None


def test_several_sources_are_numbered(digit_shards):
    shards = resolve_sources([str(digit_shards[0]), f"{digit_shards[0].parent}/0000[23].tar"])
    assert [s.source for s in shards] == [0, 1, 1]


@pytest.mark.parametrize("spec", ["missing/{0..3}.tar", "nowhere/*.tar", "nope/manifest.json"])
def test_sources_that_match_nothing_are_user_errors(spec, tmp_path):
    with pytest.raises(DataError):
        resolve_sources([str(tmp_path / spec)])


def test_pipe_and_file_urls_read_the_same_samples(digit_shards):
    path = digit_shards[1]
    local = [key for _, key, _ in iter_shard(str(path))]
    assert [key for _, key, _ in iter_shard(f"pipe:cat {path}")] == local
    assert [key for _, key, _ in iter_shard(f"file://{path}")] == local
    assert len(local) == 16


def test_http_shards_stream_through_fsspec(digit_shards):
    handler = functools.partial(QuietHandler, directory=str(digit_shards[0].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{00000..00001}}.tar"
        shards = resolve_sources([url])
        keys = [key for s in shards for _, key, _ in iter_shard(s.url)]
    finally:
        server.shutdown()
    assert len(keys) == 32 and keys[0] == "digit00000"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_mixing_weights_set_the_share_of_each_source_in_resampled_mode():
    shards = [Shard(f"a{i}", source=0) for i in range(2)] + [
        Shard(f"b{i}", source=1) for i in range(8)
    ]
    cfg = DataConfig(weights=[0.8, 0.2], resampled=True)
    plan = ShardPlan(len(shards), seed=0, resampled=True, shard_weights=shard_weights(shards, cfg))
    drawn = Counter(
        shards[p.shard].source
        for epoch in range(100)
        for worker in range(2)
        for p in plan.stream_pieces(epoch, 0, 1, worker, 2)
    )
    assert drawn[0] / (drawn[0] + drawn[1]) == pytest.approx(0.8, abs=0.04)
