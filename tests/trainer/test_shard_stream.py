"""The loader: split by rank then worker, exact positions, corrupt data, health checks."""

import io
import itertools
import tarfile
from collections import Counter

import pytest
import torch

from trainer.configs import DataConfig
from trainer.data import build_loader, check_data, new_position, stream_batches
from trainer.position import DataPosition, PositionTracker, ShardPlan, Topology
from trainer.sources import DataError, resolve_sources
from trainer.tokenizer import CaptionTokenizer, byte_tokenizer

TOKENIZER = CaptionTokenizer(byte_tokenizer(), context_length=32)


def data_config(**kw) -> DataConfig:
    defaults = dict(batch_size=6, workers=2, shuffle_buffer=8, image_size=32, context_length=32)
    return DataConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def eight_shards(make_shards, tmp_path_factory):
    """8 shards x 12 samples: each of 2 ranks x 2 workers gets 2 shards = 4 batches of 6."""
    return make_shards(tmp_path_factory.mktemp("eight"), 96, per_shard=12)


def rank_batches(shards, cfg, position, rank, n):
    """The first n batches rank `rank` trains on, through a real DataLoader, and its tracker."""
    tracker = PositionTracker(position, rank)
    batches = []
    for batch in itertools.islice(build_loader(shards, cfg, TOKENIZER, position, rank), n):
        tracker.update(batch["state"])
        batches.append(batch)
    return batches, tracker


def epoch_keys(batches, epoch=0):
    return [k for b in batches for k, s in zip(b["key"], b["sample"].tolist()) if s[0] == epoch]


def test_plan_splits_every_epoch_over_ranks_then_workers():
    plan = ShardPlan(num_shards=23, seed=3)
    for epoch in range(3):
        got = [
            p.shard
            for rank in range(3)
            for worker in range(2)
            for p in plan.stream_pieces(epoch, rank, 3, worker, 2)
        ]
        assert sorted(got) == list(range(23))
    assert plan.epoch_pieces(0) != plan.epoch_pieces(1)


def test_two_ranks_two_workers_read_each_sample_once_per_epoch(eight_shards, keys_in):
    shards = resolve_sources([str(p) for p in eight_shards])
    cfg = data_config()
    position = new_position(shards, cfg, Topology(world=2, workers=2))
    check_data(shards, cfg, position.topology, TOKENIZER)
    per_rank = [epoch_keys(rank_batches(shards, cfg, position, rank, 8)[0]) for rank in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 48  # 8 batches x 6, all of epoch 0
    assert not set(per_rank[0]) & set(per_rank[1])
    seen = per_rank[0] + per_rank[1]
    assert Counter(seen) == Counter(keys_in(eight_shards))


def test_batches_are_uint8_images_and_clip_token_rows(eight_shards):
    shards = resolve_sources([str(eight_shards[0])])
    cfg = data_config(workers=0)
    batch = next(
        stream_batches(shards, cfg, TOKENIZER, new_position(shards, cfg, Topology(1, 1)), 0, 0)
    )
    assert batch["image"].shape == (6, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["text"].shape == (6, 32) and (batch["text"][:, 0] == TOKENIZER.sot_id).all()
    assert TOKENIZER.decode(batch["text"][0]).startswith("a photo of the digit ")


@pytest.mark.parametrize("resampled", [False, True], ids=["epochs", "resampled"])
def test_resume_on_the_same_topology_repeats_the_uninterrupted_batches(eight_shards, resampled):
    shards = resolve_sources([str(p) for p in eight_shards])
    cfg = data_config(resampled=resampled)
    position = new_position(shards, cfg, Topology(world=1, workers=2))
    uninterrupted, _ = rank_batches(shards, cfg, position, 0, 22)  # into the second epoch
    for stop in (5, 15):
        first, tracker = rank_batches(shards, cfg, position, 0, stop)
        saved = DataPosition.from_state_dict(tracker.merged([tracker.local_state()]).state_dict())
        rest, _ = rank_batches(shards, cfg, saved, 0, 22 - stop)
        for a, b in zip(uninterrupted, first + rest, strict=True):
            assert a["key"] == b["key"]
            assert torch.equal(a["image"], b["image"])  # same crops: augmentation is per sample


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores
@pytest.mark.parametrize(
    "before, after, steps", [((1, 2), (2, 1), 5), ((2, 2), (1, 3), 3), ((2, 1), (3, 2), 7)]
)
def test_resume_on_a_new_topology_reads_the_rest_of_the_epoch_once(
    eight_shards, keys_in, before, after, steps
):
    shards = resolve_sources([str(p) for p in eight_shards])
    cfg = data_config(workers=before[1])
    start = new_position(shards, cfg, Topology(*before))
    seen, local_states = [], []
    for rank in range(before[0]):
        batches, tracker = rank_batches(shards, cfg, start, rank, steps)
        seen += epoch_keys(batches)
        local_states.append(tracker.local_state())
    saved = DataPosition.from_state_dict(tracker.merged(local_states).state_dict())

    moved = saved.for_topology(Topology(*after))
    cfg = data_config(workers=after[1])
    for rank in range(after[0]):  # 96 samples a stream: each has finished epoch 0 by then
        seen += epoch_keys(rank_batches(shards, cfg, moved, rank, 16 * after[1])[0])
    assert Counter(seen) == Counter(keys_in(eight_shards))


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_tar_and_truncated_image_are_skipped_and_counted(digit_shards, tmp_path, keys_in):
    good = digit_shards[0]
    truncated_tar = tmp_path / "truncated.tar"
    truncated_tar.write_bytes(digit_shards[1].read_bytes()[:20000])  # cut in the third sample
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 100)
    with tarfile.open(digit_shards[2]) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    damaged = []
    for name, data in members:
        if name.startswith("digit00032.png"):
            data = data[: len(data) // 2]  # truncated image
        if name.startswith("digit00033.txt"):
            continue  # no caption
        damaged.append((name, data))
    bad_samples = tmp_path / "bad-samples.tar"
    write_tar(bad_samples, damaged)

    shards = resolve_sources([str(p) for p in (good, truncated_tar, garbage, bad_samples)])
    cfg = data_config(workers=0, batch_size=1, shuffle_buffer=1)
    position = new_position(shards, cfg, Topology(1, 1))
    keys, state = [], None
    for batch in stream_batches(shards, cfg, TOKENIZER, position, rank=0, worker=0):
        if batch["sample"][0, 0] > 0:
            break
        keys += batch["key"]
        state = batch["state"]
    assert state["skipped"] == {"decode_error": 1, "missing_caption": 1}
    assert state["bad_shards"] == 2
    expected = set(keys_in([good, digit_shards[2]])) - {"digit00032", "digit00033"}
    assert expected < set(keys) and len(keys) == len(set(keys))
    assert set(keys) - expected <= set(keys_in([digit_shards[1]]))  # the part before the cut


def test_too_many_corrupt_samples_fail_with_a_clear_error(tmp_path, digit_shards):
    with tarfile.open(digit_shards[0]) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    broken = [(n, d[:40] if n.endswith(".png") else d) for n, d in members]
    write_tar(tmp_path / "broken.tar", broken)
    shards = resolve_sources([str(tmp_path / "broken.tar")])
    cfg = data_config(workers=0, max_skipped_fraction=0.2, skip_grace=5)
    with pytest.raises(DataError, match="skipped .* more than --max-skipped-fraction 0.2"):
        next(
            stream_batches(shards, cfg, TOKENIZER, new_position(shards, cfg, Topology(1, 1)), 0, 0)
        )


def test_manifest_sample_counts_catch_a_short_shard(digit_shards, make_manifest, tmp_path):
    shard = tmp_path / "shards" / "00000.tar"
    shard.parent.mkdir()
    shard.write_bytes(digit_shards[0].read_bytes())
    manifest = make_manifest(tmp_path, [shard], [20])  # claims 20 samples; the tar holds 16
    shards = resolve_sources([str(manifest)])
    cfg = data_config(workers=0, batch_size=4)
    batches = stream_batches(
        shards, cfg, TOKENIZER, new_position(shards, cfg, Topology(1, 1)), 0, 0
    )
    state = next(itertools.islice(batches, 3, None))["state"]  # 16 samples read: the whole shard
    assert state["bad_shards"] == 1


def test_img2dataset_layout_loads_unchanged(tmp_path, digit_shards):
    """img2dataset writes 9-digit keys, .jpg/.txt/.json members, in a subfolder-free tar."""
    with tarfile.open(digit_shards[0]) as tar:
        pngs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]
    from PIL import Image

    members = []
    for i, png in enumerate(pngs[:6]):
        jpg = io.BytesIO()
        Image.open(io.BytesIO(png)).save(jpg, format="JPEG")
        key = f"{i:09d}"
        members += [
            (f"{key}.jpg", jpg.getvalue()),
            (f"{key}.txt", b"a digit"),
            (
                f"{key}.json",
                b'{"url": "http://x/%d.jpg", "caption": "a digit", "status": "success"}' % i,
            ),
        ]
    write_tar(tmp_path / "00000.tar", members)
    shards = resolve_sources([str(tmp_path / "{00000..00000}.tar")])
    cfg = data_config(workers=0)
    check_data(shards, cfg, Topology(1, 1), TOKENIZER)
    batch = next(
        stream_batches(shards, cfg, TOKENIZER, new_position(shards, cfg, Topology(1, 1)), 0, 0)
    )
    assert sorted(batch["key"]) == [f"{i:09d}" for i in range(6)]


def test_health_check_names_the_problem(tmp_path, digit_shards):
    shards = resolve_sources([str(p) for p in digit_shards])
    with pytest.raises(DataError, match="4 shards cannot feed 2 ranks x 4 loader workers"):
        check_data(shards, data_config(), Topology(2, 4), TOKENIZER)
    write_tar(tmp_path / "nocaption.tar", [("a.png", b"x"), ("a.json", b"{}")])
    shards = resolve_sources([str(tmp_path / "nocaption.tar")])
    with pytest.raises(DataError, match=r"expected KEY.jpg\|png\|webp .* KEY.txt"):
        check_data(shards, data_config(), Topology(1, 1), TOKENIZER)
    with pytest.raises(DataError, match="mixing weights need --resampled"):
        check_data(shards, data_config(data=["a"], weights=[1.0]), Topology(1, 1), TOKENIZER)
