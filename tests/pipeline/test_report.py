import subprocess
import sys
from pathlib import Path

from pipeline.accounting.charts import funnel_steps, nice_ticks
from pipeline.accounting.distributions import (
    DistributionsFn,
    bucket,
    histogram_bins,
    row_features,
)
from pipeline.accounting.report import render_html, render_text
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


def test_histograms_read_back_from_stats_json_in_numeric_order_with_gaps():
    # stats.json stores bins as sorted JSON keys, where "128-256" sorts before "64-128"
    stats = Stats(
        distributions={
            "original smaller side (px)": {"1024-2048": 1, "128-256": 2, "0-64": 3},
            "caption length (characters)": {"20-50": 4, "1-10": 1},
            "caption language": {"de": 1, "en": 5},
        }
    )
    back = Stats.from_json(stats.to_json())
    assert list(back.distributions["original smaller side (px)"]) == [
        "0-64",
        "1024-2048",
        "128-256",
    ]
    side = histogram_bins(
        "original smaller side (px)", back.distributions["original smaller side (px)"]
    )
    assert side == [
        ("0-64", 3),
        ("64-128", 0),
        ("128-256", 2),
        ("256-512", 0),
        ("512-1024", 0),
        ("1024-2048", 1),
    ]
    chars = histogram_bins(
        "caption length (characters)", back.distributions["caption length (characters)"]
    )
    assert chars == [("1-10", 1), ("10-20", 0), ("20-50", 4)]
    assert histogram_bins("caption language", back.distributions["caption language"]) == [
        ("en", 5),
        ("de", 1),
    ]
    # the terminal and the page show them in that order
    text = render_text(back)
    assert text.index("  0-64 ") < text.index("  64-128 ") < text.index("  128-256 ")
    assert text.index("  1024-2048 ") > text.index("  512-1024 ")
    page = render_html(back, None, None)
    assert (
        page.index(">0-64<")
        < page.index(">64-128<")
        < page.index(">128-256<")
        < page.index(">1024-2048<")
    )
    assert page.index(">1-10<") < page.index(">10-20<") < page.index(">20-50<")


def test_nice_ticks_cover_the_peak_in_round_steps():
    assert nice_ticks(1461) == [0, 500, 1000, 1500]
    assert nice_ticks(86) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0) == [0, 1]


def test_funnel_steps_go_from_input_to_written():
    steps = funnel_steps(_stats())
    assert [(name, left, removed) for name, left, _, removed in steps] == [
        ("valid rows", 9, 1),
        ("downloaded and decoded", 7, 2),
        ("passed the filters", 7, 0),
        ("unique: written", 6, 1),
    ]
    assert steps[-1][1] == _stats().written


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
    # the funnel, the removals by reason and one histogram
    assert page.count("<svg") == 3 and "1 of 3 evaluation items" in page and "a.png" in page


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
