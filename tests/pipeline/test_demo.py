"""The demo end to end, smaller (600 digits, 300 steps): curation on the loopback server,
training, zero-shot evaluation on the held-out digits, the pictures and the summary page; and the
validation mode that chooses the demo's settings without the held-out digits."""

import json
import re

import webdataset as wds
from PIL import Image

from pipeline.demo import DemoConfig, build_web, demo_digits, main, split_digits
from schemas import Manifest, Stats


def test_validation_mode_never_renders_the_held_out_digits(tmp_path):
    cfg = DemoConfig(output=tmp_path, digits=600, validation=True)
    train, held_out = split_digits(cfg.digits, cfg.held_out, cfg.seed)
    web_digits, val_digits = demo_digits(cfg)
    assert sorted(web_digits + val_digits) == train  # the training digits, split again
    assert len(val_digits) == 113 and not set(web_digits) & set(val_digits)
    _, folder, noise = build_web(cfg, web_digits, val_digits)
    assert folder == tmp_path / "validation" and noise["leaked"] > 0
    # every file the demo serves or evaluates on is named after the digit it shows
    rendered = {
        int(m[1]) for p in tmp_path.rglob("*") if (m := re.search(r"(\d{5})\.\w+$", p.name))
    }
    assert rendered == set(train) and not rendered & set(held_out)
    evaluated = {int(p.stem) for p in folder.rglob("*.png")}
    assert evaluated == set(val_digits)
    assert not (tmp_path / "heldout").exists()


def test_demo_end_to_end_with_a_short_training(tmp_path, capsys):
    assert (
        main(["--output", str(tmp_path), "--digits", "600", "--steps", "300", "--batch-size", "64"])
        == 0
    )
    stats = Stats.from_json((tmp_path / "dataset/stats.json").read_text())
    stats.check()
    assert stats.failed == {"decode": 1, "http_404": 8, "not_image": 1}
    assert stats.filtered["boilerplate_caption"] > 0 and stats.filtered["missing_caption"] > 0
    assert stats.duplicate["near_duplicate"] > 0
    found = json.loads((tmp_path / "dataset/decontamination.json").read_text())
    leaked = sum(1 for _ in (tmp_path / "web/copies").glob("leak-*"))
    assert (
        leaked > 0 and found["samples_removed"] >= leaked
    )  # every leaked held-out digit was removed
    manifest = Manifest.from_json((tmp_path / "dataset/manifest.json").read_text())
    urls = [str(tmp_path / "dataset" / s.url) for s in manifest.shardlist]
    assert not any(
        "leak-" in s["json"]["url"] for s in wds.WebDataset(urls, shardshuffle=False).decode()
    )
    zeroshot = json.loads((tmp_path / "zeroshot.json").read_text())
    assert (
        zeroshot["results"]["zeroshot_images"]
        == sum(sum(row) for row in zeroshot["confusion"])
        == 150
    )
    assert zeroshot["results"]["top-1"] > 0.5  # chance is 0.1
    for png in ("training_curve.png", "confusion.png"):
        assert Image.open(tmp_path / png).size[0] > 300
    page = (tmp_path / "summary.html").read_text()
    assert (
        "Zero-shot top-1" in page and "training_curve.png" in page and "dataset/report.html" in page
    )
    printed = capsys.readouterr().out
    assert "zero-shot top-1 on" in printed
    for picture in ("training_curve.png", "confusion.png", "report.html", "summary.html"):
        assert str(tmp_path) in printed and picture in printed  # the paths, for a newcomer
