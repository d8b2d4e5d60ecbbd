import subprocess
import sys
from pathlib import Path

from pipeline.accounting.report import (
    DistributionsFn,
    bucket,
    render_html,
    render_text,
    row_features,
)
from schemas import Stats

WEBPAIRS = str(Path(sys.executable).with_name("webpairs"))


def test_bucket_edges():
    edges = (0, 64, 128)
    assert [bucket(v, edges) for v in (-1, 0, 63, 64, 127, 128, 10_000)] == [
        "<0",
        "0-64",
        "0-64",
        "64-128",
        "64-128",
        "128+",
        "128+",
    ]


def test_histograms_are_numerically_ordered():
    fn = DistributionsFn()
    acc = fn.create_accumulator()
    for w in (300, 100, 2000, 100):
        for pair in row_features(
            {"original_width": w, "original_height": w, "caption": "a b", "language": "en"}
        ):
            acc = fn.add_input(acc, pair)
    out = fn.extract_output(fn.merge_accumulators([acc, fn.create_accumulator()]))
    assert list(out["original smaller side (px)"].items()) == [
        ("64-128", 2),
        ("256-512", 1),
        ("1024-2048", 1),
    ]
    assert out["caption language"] == {"en": 4}


def _stats():
    return Stats(
        input=10,
        written=6,
        failed={"http_404": 2},
        duplicate={"near_duplicate": 1},
        invalid={"bad_scheme": 1},
        shards=1,
        distributions={"aspect ratio": {"1.0-1.25": 5, "2.0-3.0": 1}},
    )


def test_render_text_and_html():
    text = render_text(_stats())
    assert "failed: http_404" in text and "aspect ratio" in text
    page = render_html(
        _stats(), None, {"eval_items": 3, "found": {"a.png": 2}, "samples_removed": 2}
    )
    assert page.count("<svg") == 2 and "1 of 3 evaluation items" in page and "a.png" in page


def test_inspect_cli(tmp_path):
    (tmp_path / "stats.json").write_text(_stats().to_json())
    proc = subprocess.run(
        [WEBPAIRS, "inspect", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "written" in proc.stdout
    proc = subprocess.run(
        [WEBPAIRS, "inspect", str(tmp_path / "none")], capture_output=True, text=True, timeout=60
    )
    assert (
        proc.returncode == 2 and "no stats.json" in proc.stderr and "Traceback" not in proc.stderr
    )
