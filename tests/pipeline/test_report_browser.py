"""report.html of a small curated output, opened in headless Chromium: it renders without a
console error, every section is there, every thumbnail loads, nothing overflows the page, and
the screenshot is kept (under tmp_path, and in $WEBPAIRS_ARTIFACTS when set).

Needs Debian's `chromium` (`make test` installs it where apt can); skipped, saying so, without.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from pipeline.jobs.curate import main as curate
from tests.browser import Chromium, find_chromium
from tests.conftest import encode, serve

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no chromium on PATH: `apt-get install chromium` (make test does where apt works)",
)

BROKEN = "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"


def _keep_screenshot(path: Path) -> None:
    folder = os.environ.get("WEBPAIRS_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


@pytest.fixture(scope="module")
def curated(photos, tmp_path_factory) -> Path:
    """Three photos as a crawl meets them (copies, re-encodes, a resize, a brightness shift),
    boilerplate captions, two dead links, and an evaluation copy of one photo."""
    tmp = tmp_path_factory.mktemp("browser")
    files, rows = {}, []
    for name in ("chelsea", "coffee", "rocket"):
        im = photos[name].convert("RGB")
        im = im.resize((320, round(320 * im.height / im.width)), Image.LANCZOS)
        variants = {
            "orig": encode(im, "JPEG", quality=92),
            "png": encode(im, "PNG"),
            "q30": encode(im, "JPEG", quality=30),  # near duplicates
            "half": encode(im.resize((160, im.height // 2), Image.LANCZOS), "JPEG", quality=90),
            "bright": encode(ImageEnhance.Brightness(im).enhance(1.2), "JPEG", quality=90),
        }
        for variant, body in variants.items():
            files[f"/{name}/{variant}"] = (body, "image/png" if variant == "png" else "image/jpeg")
            rows.append((f"/{name}/{variant}", f"a photo of {name}, {variant}"))
        rows.append((f"/{name}/orig", f"{name} again"))  # the same bytes: an exact duplicate
        rows.append((f"/{name}/orig", f"IMG_{len(rows):04d}.jpg"))  # a boilerplate caption
    rows += [("/gone/1.jpg", "a dead link"), ("/gone/2.jpg", "another")]
    evals = tmp / "eval" / "cats"
    evals.mkdir(parents=True)
    photos["chelsea"].convert("RGB").resize((200, 133)).save(evals / "chelsea.png")
    recipe = {
        "stages": ["filters", "decontaminate", "exact_dedupe", "near_dedupe"],
        "filters": {"drop_boilerplate": True},
        "decontaminate": {"source": str(tmp / "eval")},
    }
    (tmp / "recipe.json").write_text(json.dumps(recipe))
    with serve(files) as site:
        table = pa.Table.from_pylist(
            [{"url": site.url(p) + f"?{i}", "caption": c} for i, (p, c) in enumerate(rows)]
        )
        pq.write_table(table, tmp / "urls.parquet")
        args = ["--input", str(tmp / "urls.parquet"), "--output", str(tmp / "out")]
        args += ["--recipe", str(tmp / "recipe.json"), "--allow-private-networks"]
        assert curate(args) == 0
    return tmp / "out"


def test_report_renders_in_chromium_with_every_section_and_every_thumbnail(curated, tmp_path):
    with Chromium() as browser:
        page = browser.open(curated / "report.html", width=1100, height=900)
        errors = page.console_errors
        sections = page.evaluate("[...document.querySelectorAll('section[id]')].map(s => s.id)")
        broken = page.evaluate(BROKEN)
        images = page.evaluate("document.images.length")
        pairs = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('section.reason')].map(s => "
            "[s.id, [...s.querySelectorAll('figure')].map(f => f.querySelectorAll('img').length)]))"
        )
        placeholders = page.evaluate("document.querySelectorAll('.missing').length")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        shot = page.screenshot(tmp_path / "report.png")
    _keep_screenshot(shot)
    assert errors == []
    assert broken == [] and images >= 10 and placeholders == 0  # every row here had an image
    for section in ("funnel", "removals", "distributions", "decontamination", "gallery"):
        assert section in sections
    # a duplicate beside its survivor, a contaminated photo beside the evaluation image
    for reason in (
        "duplicate-duplicate_image",
        "duplicate-near_duplicate",
        "filtered-contaminated",
    ):
        assert pairs[f"gallery-{reason}"] and set(pairs[f"gallery-{reason}"]) == {2}, pairs
    assert pairs["gallery-filtered-boilerplate_caption"] and "gallery-failed-http_404" in sections
    assert overflow <= 0  # nothing wider than the window
    with Image.open(shot) as im:
        assert im.width == 1100 and im.height > 2000  # the whole page, below the fold too


def test_the_harness_sees_console_errors_and_broken_images(tmp_path):
    """What the report test relies on: a page with an error and a missing image is caught."""
    page_file = tmp_path / "bad.html"
    page_file.write_text(
        "<!doctype html><html><body><img src='missing.jpg'>"
        "<script>console.error('deliberate')</script></body></html>"
    )
    with Chromium() as browser:
        page = browser.open(page_file)
        broken = page.evaluate(BROKEN)
        errors = page.console_errors
    assert broken == [(tmp_path / "missing.jpg").as_uri()]
    assert "deliberate" in errors and any("missing.jpg" in e for e in errors)
