"""NearDedupe's default thresholds on photos they were not chosen on.

bench/near_hashes.py chose `threshold` / `verify_threshold` on its TUNING_PHOTOS only. These
tests use the test photos of test_curation.py (BASES, never tuned on) and check what README
promises: re-encoded, resized and brightness-shifted copies are found, crops of up to 2.5 % a
side nearly always and of 5 % a side about half the time, and other framings of one photo (crops
whose edges differ by more than 10 % of their size) are not merged.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from pipeline.crawl.images import ImageConfig, decode_and_resize
from pipeline.curation.dedupe.near import NearDedupeConfig
from schemas.imagehash import hamming
from tests.conftest import encode, serve
from tests.pipeline.test_curation import BASES, TEXTURES, _results, _run, _skimage

BENCH = Path(__file__).resolve().parents[2] / "bench" / "near_hashes.py"
FRAMING_APART = 0.10  # edges this far apart (share of the crop's side): another framing


def _tuning_photos(tree: ast.Module) -> set[str]:
    """TUNING_PHOTOS of bench/near_hashes.py, read from its source (tests import no bench)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "TUNING_PHOTOS"
        ]:
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{BENCH} has no TUNING_PHOTOS")


def test_thresholds_are_tested_on_photos_they_were_not_tuned_on():
    tree = ast.parse(BENCH.read_text())
    tuning = _tuning_photos(tree)
    assert len(tuning) >= 8
    assert not tuning & (set(BASES) | set(TEXTURES))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[0] == "tests"]  # nor the test photos' code


def _photo(photos: dict, name: str, side: int = 640) -> Image.Image:
    im = photos[name].convert("RGB") if name in photos else _skimage(name)
    scale = min(1.0, side / max(im.size))
    return im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)


def _sources(photos: dict) -> dict[str, Image.Image]:
    """The test photos, the large Hubble field cut into 2 x 3 tiles (13 sources)."""
    out = {name: _photo(photos, name) for name in BASES if name != "hubble_deep_field"}
    hubble = _photo(photos, "hubble_deep_field", side=1000)
    w, h = hubble.size
    for i, j in itertools.product(range(3), range(2)):
        out[f"hubble{i}{j}"] = hubble.crop(
            (i * w // 3, j * h // 2, (i + 1) * w // 3, (j + 1) * h // 2)
        )
    return out


def _crop(im: Image.Image, box: tuple) -> Image.Image:
    """box: (left, top, right, bottom) as shares of the width / height."""
    w, h = im.size
    return im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))


def _edge_shift(a: tuple, b: tuple) -> float:
    """Largest difference between corresponding edges, as a share of the larger box's side."""
    w, h = max(a[2] - a[0], b[2] - b[0]), max(a[3] - a[1], b[3] - b[1])
    return max(
        abs(a[0] - b[0]) / w, abs(a[2] - b[2]) / w, abs(a[1] - b[1]) / h, abs(a[3] - b[3]) / h
    )


def _framings(rng: np.random.Generator, n: int, apart: float = 0.0) -> list[tuple]:
    """n crops of 1/3 to all of the width and height, anywhere; each pair > `apart` apart."""
    boxes: list[tuple] = []
    while len(boxes) < n:
        fw, fh = rng.uniform(1 / 3, 1, 2)
        x, y = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
        box = (x, y, x + fw, y + fh)
        if all(_edge_shift(box, b) > apart for b in boxes):
            boxes.append(box)
    return boxes


@pytest.fixture(scope="module")
def framing_site(photos):
    """5 framings of each of the 13 sources, every two of one source > 10 % apart: 65 crops."""
    rng = np.random.default_rng(0)
    files = {}
    for name, im in _sources(photos).items():
        for k, box in enumerate(_framings(rng, 5, FRAMING_APART)):
            files[f"/f/{name}/{k}"] = (encode(_crop(im, box), "JPEG", quality=90), "image/jpeg")
    with serve(files) as site:
        site.group_of = {site.url(p): p for p in files}
        yield site


def test_default_recipe_keeps_other_framings_of_one_photo(framing_site, tmp_path):
    """On the tuning photos the defaults remove 0.06-0.13 crops from such a set of 55 (mean of
    200 draws, 3 seeds; at most 2): 0 is expected here, 1 is allowed, more is not what the
    bench measured."""
    rows = _results(_run(framing_site, tmp_path))
    removed = sorted(r["url"].split("/f/")[1] for r in rows if r["status"] == "duplicate")
    assert len(rows) == 65 and len(removed) <= 1, removed


def _hashes(body: bytes) -> tuple[str, str]:
    out = decode_and_resize(body, ImageConfig(image_size=128))  # as _run's --image-size 128
    return out.phash, out.dhash


def _edits(im: Image.Image) -> list[bytes]:
    w, h = im.size
    return [
        *(encode(im, "JPEG", quality=q) for q in (30, 60, 95)),
        encode(im, "PNG"),
        encode(im, "WEBP", quality=60),
        *(
            encode(im.resize((w * s // 4, h * s // 4), Image.LANCZOS), "JPEG", quality=90)
            for s in (2, 6, 8)
        ),
        *(encode(ImageEnhance.Brightness(im).enhance(f), "JPEG", quality=90) for f in (0.8, 1.2)),
    ]


def test_default_thresholds_on_photos_they_were_not_tuned_on(photos):
    """Hash-level figures for NearDedupeConfig()'s thresholds, with the bands README states
    (tuning photos, bench/RESULTS-dedupe.md): edits 100 %; crops <= 2.5 % a side 95-99 %, at
    5 % 55-64 %; other framings 0.6-1.0 matches per 1,000 pairs. Asserted with slack for 8
    photos, set before the first run here: >= 90 %, >= 40 %, <= 2 per 1,000. That run gave
    0.95, 0.40 (16 of 40 crops at 5 %: on the bound) and 2 of 5,573 framing pairs."""
    cfg = NearDedupeConfig()
    rng = np.random.default_rng(1)

    def near(a, b) -> bool:
        return hamming(a[0], b[0]) <= cfg.threshold and hamming(a[1], b[1]) <= cfg.verify_threshold

    missed_edits, crops = [], {cut: [] for cut in (0.01, 0.02, 0.025, 0.05)}
    for name in BASES:
        im = _photo(photos, name)
        orig = _hashes(encode(im, "JPEG", quality=92))
        missed_edits += [(name, i) for i, b in enumerate(_edits(im)) if not near(orig, _hashes(b))]
        for cut, found in crops.items():  # every side cut, and 4 shapes whose largest cut is `cut`
            for c in [np.full(4, cut), *(v / v.max() * cut for v in rng.uniform(0, 1, (4, 4)))]:
                body = encode(_crop(im, (c[0], c[1], 1 - c[2], 1 - c[3])), "JPEG", quality=90)
                found.append(near(orig, _hashes(body)))
    matched = pairs = 0
    for im in _sources(photos).values():
        boxes = _framings(rng, 30)
        hs = [_hashes(encode(_crop(im, b), "JPEG", quality=90)) for b in boxes]
        for i, j in itertools.combinations(range(len(boxes)), 2):
            if _edge_shift(boxes[i], boxes[j]) > FRAMING_APART:
                pairs += 1
                matched += near(hs[i], hs[j])
    small, five = np.mean(crops[0.01] + crops[0.02] + crops[0.025]), np.mean(crops[0.05])
    figures = f"crops <= 2.5 %: {small:.2f}, 5 %: {five:.2f}, framings: {matched}/{pairs} pairs"
    assert not missed_edits, missed_edits
    assert small >= 0.9 and five >= 0.4 and matched <= 0.002 * pairs, figures
