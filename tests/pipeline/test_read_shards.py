"""Curating datasets users already hold: img2dataset folders, plain tars, our own outputs."""

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.io.read_shards import list_tars
from pipeline.jobs.curate import main
from schemas import Manifest, Stats, group_samples
from tests.conftest import encode


def _img2dataset_folder(folder, photos) -> int:
    """A folder laid out as img2dataset writes it: NNNNN.tar + NNNNN.parquet + NNNNN_stats.json."""
    folder.mkdir()
    names = sorted(photos)
    n = 0
    for shard in range(2):
        rows = []
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for i, name in enumerate(names):
                key = f"{shard:05d}{i:04d}"
                im = photos[name].convert("RGB").resize((96 + 16 * shard, 80))
                meta = {
                    "url": f"http://example.com/{shard}/{name}.jpg",
                    "key": key,
                    "status": "success",
                    "similarity": 0.3,
                }
                sink.write(
                    {
                        "__key__": key,
                        "jpg": encode(im, "JPEG", quality=85),
                        "txt": f"{name} {shard}",
                        "json": json.dumps(meta).encode(),
                    }
                )
                rows.append(meta)
                n += 1
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": len(rows)}))
    return n


def test_group_samples_follows_webdataset_rule():
    members = [
        ("a/x.jpg", b"1"),
        ("a/x.txt", b"2"),
        ("a/y.seg.png", b"3"),
        ("a/y.json", b"4"),
        ("README", b""),
        ("a/__meta__.json", b"5"),
    ]
    assert list(group_samples(members)) == [
        {"__key__": "a/x", "jpg": b"1", "txt": b"2"},
        {"__key__": "a/y", "seg.png": b"3", "json": b"4"},
    ]


def test_list_tars_forms(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    assert len(list_tars(str(tmp_path))) == 3
    assert len(list_tars(str(tmp_path / "{00000..00001}.tar"))) == 2
    assert len(list_tars(str(tmp_path / "*.tar"))) == 3


def test_img2dataset_folder_with_a_corrupt_shard(photos, tmp_path):
    src = tmp_path / "laion"
    n = _img2dataset_folder(src, photos)
    good = (src / "00000.tar").read_bytes()
    (src / "00002.tar").write_bytes(
        good[: len(good) // 2] + b"\x00garbage" * 1000
    )  # truncated mid-member
    out = tmp_path / "out"
    args = ["--input", str(src), "--input-format", "webdataset", "--output", str(out), "--image-size", "64",
            "--save-additional-columns", "similarity", "--recipe", "none"]  # fmt: skip
    assert main(args) == 0
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()
    assert stats.invalid == {"corrupt_shard": 1}
    assert stats.written >= n  # both good shards, plus whatever preceded the damage in the third
    manifest = Manifest.from_json((out / "manifest.json").read_text())
    samples = list(
        wds.WebDataset([str(out / s.url) for s in manifest.shardlist], shardshuffle=False).decode(
            "pil"
        )
    )
    assert all(min(s["jpg"].size) == 64 for s in samples)
    by_caption = {s["txt"]: s for s in samples}
    assert by_caption["chelsea 1"]["json"]["url"] == "http://example.com/1/chelsea.jpg"
    assert by_caption["chelsea 1"]["json"]["similarity"] == "0.3"


def test_recurating_our_own_output_keeps_keys_stable(photos, tmp_path):
    src = tmp_path / "laion"
    _img2dataset_folder(src, photos)
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        main(
            [
                "--input",
                str(src),
                "--input-format",
                "webdataset",
                "--output",
                str(first),
                "--recipe",
                "none",
                "--resize-mode",
                "no",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--input",
                str(first / "manifest.json"),
                "--output",
                str(second),
                "--recipe",
                "default",
                "--resize-mode",
                "no",
            ]
        )
        == 0
    )
    s1 = Stats.from_json((first / "stats.json").read_text())
    s2 = Stats.from_json((second / "stats.json").read_text())
    assert s2.input == s1.written
    # Shard 1 repeats shard 0's photos at another size: near-dedupe removes one copy of each.
    assert s2.written == s1.written // 2 and s2.duplicate == {"near_duplicate": s1.written // 2}


def test_missing_tar_input_is_one_clear_error(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "none-*.tar"), "--output", str(tmp_path / "o")]) == 2
    assert "matches no .tar file" in capsys.readouterr().err


@pytest.mark.parametrize("payload", [b"<html>not an image</html>"])
def test_non_image_member_is_counted(tmp_path, payload):
    with wds.TarWriter(str(tmp_path / "x.tar")) as sink:
        sink.write({"__key__": "a", "jpg": payload, "txt": "c"})
        sink.write({"__key__": "b", "txt": "caption only"})
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path / "x.tar"), "--output", str(out)]) == 0
    stats = Stats.from_json((out / "stats.json").read_text())
    assert (
        stats.failed == {"not_image": 1}
        and stats.invalid == {"missing_image": 1}
        and stats.written == 0
    )


def test_sample_with_corrupt_json_is_kept_and_counted(photos, tmp_path):
    jpg = encode(photos["chelsea"].convert("RGB").resize((96, 80)), "JPEG", quality=85)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        sink.write({"__key__": "a", "jpg": jpg, "txt": "a cat", "json": b'{"url": "http://x/a"}'})
        sink.write({"__key__": "b", "jpg": jpg, "txt": "the same cat", "json": b'{"url": "http:'})
        sink.write({"__key__": "c", "jpg": jpg, "txt": "a list", "json": b"[1, 2]"})
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "00000.tar"), "--output", str(out), "--recipe", "none"]
    assert main(args) == 0
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()
    assert stats.written == 3 and stats.warnings == {"bad_json": 2}
    rows = pq.read_table(next((out / "shards").glob("*.parquet"))).to_pylist()
    assert {r["caption"]: r["url"] for r in rows} == {
        "a cat": "http://x/a",
        "the same cat": None,
        "a list": None,
    }


@pytest.mark.parametrize("damage", ["cut at a header", "cut inside a header", "garbled header"])
def test_shard_damaged_at_a_member_header_is_counted(photos, tmp_path, damage):
    jpg = encode(photos["coffee"].convert("RGB").resize((96, 80)), "JPEG", quality=85)
    with wds.TarWriter(str(tmp_path / "whole.tar")) as sink:
        for key in ("a", "b", "c"):
            sink.write({"__key__": key, "jpg": jpg, "txt": f"coffee {key}"})
    whole = (tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        at = tar.getmember("c.jpg").offset  # tarfile took each of these for a whole, shorter tar
    damaged = {
        "cut at a header": whole[:at],
        "cut inside a header": whole[: at + 100],
        "garbled header": whole[:at] + b"\x07" * 512 + whole[at + 512 :],
    }[damage]
    (tmp_path / "whole.tar").unlink()
    (tmp_path / "00000.tar").write_bytes(damaged)
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path / "00000.tar"), "--output", str(out)]) == 0
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()  # b, whose members might go on past the damage, is part of the counted rest
    assert stats.written == 1 and stats.invalid == {"corrupt_shard": 1}
