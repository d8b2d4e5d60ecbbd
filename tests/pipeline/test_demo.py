"""The demo end to end, as `make demo` runs it: curation on the loopback server, training,
zero-shot evaluation on the held-out digits against the logistic regression, the pictures and the
summary page; and the validation mode that chooses the demo's settings without the held-out
digits."""

import json
import re

import webdataset as wds
from PIL import Image

from pipeline.demo.app import DemoConfig, demo_digits, main
from pipeline.demo.web import build_web, split_digits
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


def test_demo_end_to_end_matches_the_logistic_regression(tmp_path, capsys):
    # The demo's own scale and settings: its promise is made at this scale (at 600 digits
    # zero-shot is 0.035 below the regression on average, bench/RESULTS-demo.md); training is
    # 200 steps at any scale, so the whole demo costs ~13 CPU-s more than the old 600-digit run.
    assert main(["--output", str(tmp_path)]) == 0
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
    # the report's gallery: near-duplicate copies beside their survivors, leaked digits beside
    # the held-out digits they copy
    dataset = tmp_path / "dataset"
    gallery = json.loads((dataset / "report/gallery.json").read_text())
    sections = {s["section"]: s["items"] for s in gallery["sections"]}
    assert sections["duplicate:near_duplicate"] and sections["filtered:contaminated"]
    for item in sections["duplicate:near_duplicate"]:
        assert (dataset / item["thumb"]).is_file() and (
            dataset / item["survivor"]["thumb"]
        ).is_file()
    for item in sections["filtered:contaminated"]:
        assert (dataset / item["thumb"]).is_file() and (dataset / item["eval"]["thumb"]).is_file()
    report = (dataset / "report.html").read_text()
    assert 'id="gallery-duplicate-near_duplicate"' in report
    assert 'id="gallery-filtered-contaminated"' in report
    manifest = Manifest.from_json((tmp_path / "dataset/manifest.json").read_text())
    urls = [str(tmp_path / "dataset" / s.url) for s in manifest.shardlist]
    assert not any(
        "leak-" in s["json"]["url"] for s in wds.WebDataset(urls, shardshuffle=False).decode()
    )
    zeroshot = json.loads((tmp_path / "zeroshot.json").read_text())
    assert (
        zeroshot["results"]["zeroshot_images"]
        == sum(sum(row) for row in zeroshot["confusion"])
        == 450
    )
    figures = json.loads((tmp_path / "demo.json").read_text())
    assert figures["zeroshot_top1"] == zeroshot["results"]["top-1"]
    # The README's promise: zero-shot at or above a supervised logistic regression on the same
    # pixels (~0.96). Over 5 seeds and 2 reruns of seed 0 (each run serves from another loopback
    # port, so its sample keys and data order differ) zero-shot - regression was +0.020..+0.033
    # (bench/RESULTS-demo.md); the 0.02 margin leaves 0.04 (18 of 450 digits) below the worst run
    # for data orders and CPUs not measured. Chance is 0.1.
    assert figures["zeroshot_top1"] >= figures["logreg_top1"] - 0.02, figures
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
