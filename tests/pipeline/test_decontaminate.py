"""Decontamination against evaluation sets that are partly unreadable: every item it cannot read
is counted and named, and too many of them stop the job with one line."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from pipeline.curation.decontaminate import (
    eval_images,
    eval_item,
    hash_eval_file,
    parse_hash_line,
)
from pipeline.curation.recipe import recipe_from_dict
from pipeline.jobs.curate import main
from schemas import Stats
from tests.conftest import encode

CRAWL = ("chelsea", "coffee", "rocket", "china")


@pytest.fixture(scope="module")
def crawl_tar(photos, tmp_path_factory) -> Path:
    """An existing dataset to curate (no download): one sample per photo."""
    path = tmp_path_factory.mktemp("crawl") / "00000.tar"
    with wds.TarWriter(str(path)) as sink:
        for name in CRAWL:
            im = photos[name].convert("RGB").resize((160, 120))
            sink.write({"__key__": name, "jpg": encode(im, "JPEG", quality=90), "txt": name})
    return path


def _eval_png(photos, name: str) -> bytes:
    im = photos[name].convert("RGB")
    return encode(im.resize((im.width * 2 // 3, im.height * 2 // 3)), "PNG")


def _curate(crawl_tar: Path, tmp_path: Path, decontaminate: dict) -> tuple[int, Path]:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stages": ["decontaminate"], "decontaminate": decontaminate}))
    out = tmp_path / "out"
    args = ["--input", str(crawl_tar), "--output", str(out), "--recipe", str(recipe)]
    return main(args), out


def test_unreadable_evaluation_images_are_counted_and_named(photos, crawl_tar, tmp_path):
    folder = tmp_path / "eval"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "chelsea.png").write_bytes(_eval_png(photos, "chelsea"))
    (folder / "coffee.png").write_bytes(_eval_png(photos, "coffee"))
    (folder / "cats" / "lfs.png").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    (folder / "truncated.jpg").write_bytes(encode(photos["china"], "JPEG")[:3000])
    code, out = _curate(crawl_tar, tmp_path, {"source": str(folder), "max_unreadable": 0.5})
    assert code == 0
    found = json.loads((out / "decontamination.json").read_text())
    assert found["eval_items"] == 2 and found["unreadable_items"] == 2
    assert [u["item"] for u in found["unreadable"]] == ["cats/lfs.png", "truncated.jpg"]
    assert found["unreadable"][0]["error"].startswith("UnidentifiedImageError: ")
    assert "truncated" in found["unreadable"][1]["error"]
    assert sorted(found["found"]) == ["cats/chelsea.png", "coffee.png"]  # the rest still protects
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()
    assert stats.filtered == {"contaminated": 2} and stats.written == 2


def test_too_many_unreadable_items_fail_the_job_with_one_line(photos, crawl_tar, tmp_path, capsys):
    good = [eval_item(f"{n}.png", _eval_png(photos, n)) for n in ("chelsea", "coffee")]
    hashes = tmp_path / "eval.csv"
    hashes.write_text(
        "id,phash,sha256\n"
        "# two good items, one malformed line: a third of the set unprotected\n"
        + "".join(f"{it['id']},{it['phash']},{it['sha256']}\n" for it in good)
        + "rocket.png,not-a-hash\n"
    )
    code, out = _curate(crawl_tar, tmp_path, {"source": str(hashes)})  # max_unreadable 1 %
    assert code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("webpairs curate: error: 1 of 3 evaluation items in ")
    assert "could not be read (33.3%), more than decontaminate max_unreadable 1.0% allows" in line
    assert line.endswith(f"(first: eval.csv:5); all are listed in {out / 'decontamination.json'}")
    report = json.loads((out / "decontamination.json").read_text())
    assert report["eval_items"] == 2 and report["unreadable_items"] == 1
    assert report["unreadable"] == [
        {"item": "eval.csv:5", "error": "PHASH 'not-a-hash' is not 16 hex digits"}
    ]
    assert not (out / "manifest.json").exists()  # stopped before any sample was matched


def test_parse_hash_line():
    assert parse_hash_line("img 1, 00FF00ff00ff00ff ,") == {
        "id": "img 1",
        "phash": "00ff00ff00ff00ff",
        "sha256": None,
    }
    assert parse_hash_line("") is None and parse_hash_line("# note") is None
    assert parse_hash_line("ID,PHASH") is None  # a header
    for bad in ("just-an-id", "a,00ff,", "a,00ff00ff00ff00ff,abc", "a,00ff00ff00ff00ff,x,y"):
        with pytest.raises(ValueError):
            parse_hash_line(bad)


def test_damaged_evaluation_tar_is_named_with_its_unread_rest(photos, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (
            ("a.png", _eval_png(photos, "coffee")),
            ("b.png", b"not an image"),
            ("c.png", _eval_png(photos, "rocket")),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    (tmp_path / "whole.tar").write_bytes(whole)
    items, bad = hash_eval_file(str(tmp_path / "whole.tar"), "")
    assert [it["id"] for it in items] == ["whole.tar:a", "whole.tar:c"]
    assert [(u["item"], u.get("rest_of_tar")) for u in bad] == [("whole.tar:b", None)]
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        c_header = tar.getmember("c.png").offset
    for cut in (c_header, c_header + 100, c_header + 600):  # at, inside, after c's header
        (tmp_path / "cut.tar").write_bytes(whole[:cut])
        items, bad = hash_eval_file(str(tmp_path / "cut.tar"), "")
        assert [it["id"] for it in items] == ["cut.tar:a"]
        assert [(u["item"], u.get("rest_of_tar")) for u in bad] == [
            ("cut.tar:b", None),
            ("cut.tar", True),
        ], cut


def test_an_item_id_reads_back_its_evaluation_image(photos, tmp_path):
    """What the audit gallery shows beside a contaminated sample: the image the id names, from
    a folder, a tar or a glob of tars; nothing for a hash list's item."""
    coffee, rocket = _eval_png(photos, "coffee"), _eval_png(photos, "rocket")
    (tmp_path / "folder" / "cups").mkdir(parents=True)
    (tmp_path / "folder" / "cups" / "coffee.png").write_bytes(coffee)
    with wds.TarWriter(str(tmp_path / "eval-0.tar")) as sink:
        sink.write({"__key__": "a", "png": coffee})
        sink.write({"__key__": "b", "png": rocket})
    (tmp_path / "hashes.txt").write_text("x,0123456789abcdef\n")
    items, _ = hash_eval_file(str(tmp_path / "eval-0.tar"), "")
    assert [it["id"] for it in items] == ["eval-0.tar:a", "eval-0.tar:b"]  # the ids matched
    assert eval_images(str(tmp_path / "folder"), ["cups/coffee.png", "cups/gone.png"]) == {
        "cups/coffee.png": coffee
    }
    tar_items = ["eval-0.tar:b", "eval-0.tar:a", "eval-0.tar:gone"]
    expected = {"eval-0.tar:a": coffee, "eval-0.tar:b": rocket}
    assert eval_images(str(tmp_path / "eval-0.tar"), tar_items) == expected
    assert eval_images(f"{tmp_path}/eval-*.tar", tar_items) == expected
    assert eval_images(str(tmp_path / "hashes.txt"), ["x"]) == {}


@pytest.mark.parametrize("share", [-0.1, 1.5, "1%", True])
def test_max_unreadable_is_validated(share):
    with pytest.raises(
        ValueError, match="decontaminate max_unreadable must be a share from 0 to 1"
    ):
        recipe_from_dict({"decontaminate": {"max_unreadable": share}})
