"""Curation stages on a planted-duplicates data set built from real photos, through the whole job."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from pipeline.jobs.curate import main
from schemas import Stats
from tests.conftest import encode, serve

# Test photos: NearDedupe's thresholds were chosen on other photos (bench/near_hashes.py
# TUNING_PHOTOS), never on these; tests/pipeline/test_near_precision.py keeps the sets apart.
BASES = ("chelsea", "coffee", "china", "rocket", "hubble_deep_field", "coins", "text", "horse")
TEXTURES = ("brick", "gravel", "grass")  # look-alike singletons


def _skimage(name: str) -> Image.Image:
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    path = next(folder.glob(f"{name}.*"))
    with Image.open(path) as im:
        return im.convert("RGB")


def _variants(im: Image.Image) -> list[tuple[str, bytes, str]]:
    """(variant, body, content-type): the copies a web crawl meets."""
    w, h = im.size
    orig = encode(im, "JPEG", quality=92)
    dx, dy = round(w * 0.05), round(h * 0.05)  # 5 % a side, the most README calls "slight"
    return [
        ("orig", orig, "image/jpeg"),
        ("copy", orig, "image/jpeg"),  # same bytes, other URL
        ("png", encode(im, "PNG"), "image/png"),  # same pixels, other encoding
        ("q30", encode(im, "JPEG", quality=30), "image/jpeg"),
        ("q60", encode(im, "WEBP", quality=60), "image/webp"),
        (
            "r50",
            encode(im.resize((w // 2, h // 2), Image.LANCZOS), "JPEG", quality=90),
            "image/jpeg",
        ),
        (
            "r150",
            encode(im.resize((w * 3 // 2, h * 3 // 2), Image.LANCZOS), "JPEG", quality=90),
            "image/jpeg",
        ),
        (
            "r200",
            encode(im.resize((w * 2, h * 2), Image.LANCZOS), "JPEG", quality=85),
            "image/jpeg",
        ),
        ("crop5", encode(im.crop((dx, dy, w - dx, h - dy)), "JPEG", quality=90), "image/jpeg"),
        (
            "bright+20",
            encode(ImageEnhance.Brightness(im).enhance(1.2), "JPEG", quality=90),
            "image/jpeg",
        ),
        (
            "bright-20",
            encode(ImageEnhance.Brightness(im).enhance(0.8), "JPEG", quality=90),
            "image/jpeg",
        ),
    ]


@pytest.fixture(scope="module")
def planted(photos) -> dict[str, tuple[bytes, str, str]]:
    """path -> (body, content-type, group): groups of duplicates plus look-alike singletons."""
    files = {}
    for name in BASES:
        im = photos[name].convert("RGB") if name in photos else _skimage(name)
        scale = 320 / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        for variant, body, ctype in _variants(im):
            files[f"/p/{name}/{variant}"] = (body, ctype, name)
    # Look-alikes: different images with similar content and statistics.
    china = photos["china"].convert("RGB")
    hubble = photos["hubble_deep_field"].convert("RGB")
    look = {
        "china-left": china.crop((0, 0, china.width // 3, china.height)),
        "china-right": china.crop((2 * china.width // 3, 0, china.width, china.height)),
        "hubble-top": hubble.crop((0, 0, hubble.width, hubble.height // 3)),
        "hubble-bottom": hubble.crop((0, 2 * hubble.height // 3, hubble.width, hubble.height)),
        **{name: _skimage(name) for name in TEXTURES},
    }
    for name, im in look.items():
        files[f"/look/{name}"] = (encode(im, "JPEG", quality=90), "image/jpeg", name)
    return files


@pytest.fixture(scope="module")
def planted_site(planted):
    with serve({p: (b, c) for p, (b, c, _) in planted.items()}) as site:
        site.group_of = {site.url(p): g for p, (_, _, g) in planted.items()}
        yield site


def _run(site, tmp_path: Path, *extra: str, only: tuple[str, ...] = ()) -> Path:
    paths = [p for p in site.files if not only or p in only]
    rows = [
        {"url": site.url(p), "caption": f"{site.group_of[site.url(p)]} {p.rsplit('/', 1)[-1]}"}
        for p in paths
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    out = tmp_path / "out"
    args = [
        "--input",
        str(tmp_path / "urls.parquet"),
        "--output",
        str(out),
        "--image-size",
        "128",
        "--allow-private-networks",
        *extra,
    ]
    assert main(args) == 0
    return out


def _results(out: Path) -> list[dict]:
    files = list((out / "shards").glob("*.parquet")) + list((out / "rejects").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


@pytest.fixture(scope="module")
def curated(planted_site, tmp_path_factory):
    return _run(planted_site, tmp_path_factory.mktemp("curation")), planted_site.group_of


def test_near_dedupe_precision_and_recall(curated):
    """Every distinct image survives and every re-encoded, resized or brightness-shifted copy
    goes. The 5 %-a-side crop is found about half the time (README, bench/RESULTS-dedupe.md:
    pHash cannot tell it from a 10 % reframing), so it is left out of the recall asserted here;
    test_near_precision.py measures crops on many more."""
    out, group_of = curated
    rows = _results(out)
    size = collections.Counter(group_of.values())
    removed = collections.Counter(group_of[r["url"]] for r in rows if r["status"] == "duplicate")
    # A group of n copies should lose exactly n - 1; removing more loses an image (a false positive).
    true_pos = sum(min(removed[g], size[g] - 1) for g in removed)
    precision = true_pos / sum(removed.values())
    recall = true_pos / sum(n - 1 for n in size.values())
    kept = collections.defaultdict(set)
    for r in rows:
        if r["status"] == "ok":
            kept[group_of[r["url"]]].add(r["url"].rsplit("/", 1)[-1])
    assert set(kept) == set(size)  # every distinct image survives, look-alikes included
    planted = {g: kept[g] for g in BASES}  # one survivor, plus the crop when it was not found
    crops_found = sum(len(v) == 1 for v in planted.values())
    figures = (
        f"precision {precision:.3f}, recall {recall:.3f}, crops found {crops_found}/{len(BASES)}"
    )
    assert precision >= 0.95, figures
    assert all(len(v - {"crop5"}) <= 1 for v in planted.values()), (planted, figures)


def test_every_removal_names_a_surviving_key(curated):
    out, _ = curated
    rows = _results(out)
    written = {r["key"] for r in rows if r["status"] == "ok"}
    dups = [r for r in rows if r["status"] == "duplicate"]
    assert dups and all(r["reason"] in ("duplicate_image", "near_duplicate") for r in dups)
    assert all(r["duplicate_of"] in written for r in dups)
    # One of orig/copy (identical bytes) goes as an exact duplicate in each of the 14 groups.
    exact = [r for r in dups if r["reason"] == "duplicate_image"]
    assert len(exact) == len(BASES) and all(r["url"].endswith(("/orig", "/copy")) for r in exact)
    assert all(r["error"] == "identical bytes" for r in exact)
    stats = Stats.from_json((out / "stats.json").read_text())
    stats.check()
    assert stats.written == len(written)


def _digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "shards").glob("*.tar"))
    }


def test_survivors_deterministic_across_runs_and_workers(planted_site, curated, tmp_path):
    out, _ = curated
    again = _run(
        planted_site, tmp_path, "--direct_running_mode=multi_processing", "--direct_num_workers=2"
    )
    assert _digests(again) == _digests(out)


def test_exact_dedupe_can_keep_every_caption(planted_site, tmp_path):
    pair = (
        "/p/coffee/orig",
        "/p/coffee/copy",
    )  # same bytes; captions "coffee orig" / "coffee copy"
    out = _run(planted_site, tmp_path / "a", "--stages", "exact_dedupe", only=pair)
    assert sum(r["status"] == "ok" for r in _results(out)) == 1
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"stages": ["exact_dedupe"], "exact_dedupe": {"captions": "keep_all"}}')
    out2 = _run(planted_site, tmp_path / "b", "--recipe", str(recipe), only=pair)
    assert sum(r["status"] == "ok" for r in _results(out2)) == 2


def test_decontamination_removes_exactly_the_planted_evaluation_images(
    planted_site, photos, tmp_path
):
    evals = ("chelsea", "coffee", "china")
    folder = tmp_path / "eval"
    for i, name in enumerate(evals):
        (folder / f"class{i}").mkdir(parents=True)
        im = photos[name].convert("RGB")
        im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.LANCZOS).save(
            folder / f"class{i}" / f"{name}.png"
        )
    out = _run(planted_site, tmp_path / "run", "--decontaminate", str(folder))
    rows = _results(out)
    contaminated = {r["url"] for r in rows if r["reason"] == "contaminated"}
    expected = {u for u, g in planted_site.group_of.items() if g in evals}
    crops = {u for u in expected if u.endswith("/crop5")}  # 5 % a side: past the pHash
    assert expected - crops <= contaminated <= expected  # threshold for some photos (coffee)
    found = json.loads((out / "decontamination.json").read_text())
    assert found["eval_items"] == 3 and sorted(found["found"]) == [
        f"class{i}/{n}.png" for i, n in enumerate(evals)
    ]
    assert found["samples_removed"] == len(contaminated)
    Stats.from_json((out / "stats.json").read_text()).check()


def test_every_stage_runs_in_multi_processing_mode_with_the_same_result(
    planted_site, photos, tmp_path
):
    (tmp_path / "eval").mkdir()
    photos["coffee"].convert("RGB").save(tmp_path / "eval" / "coffee.png")
    (tmp_path / "block.txt").write_text("gravel\n")
    recipe = {
        "stages": ["decontaminate", "filters", "exact_dedupe", "near_dedupe", "caption_dedupe"],
        "captions": {
            "clean": True,
            "candidate_languages": ["en", "de", "fr"],
        },  # fewer models to load
        "filters": {"languages": ["en"], "blocklist": str(tmp_path / "block.txt"), "min_side": 40},
        "decontaminate": {"source": str(tmp_path / "eval")},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    only = tuple(
        p
        for p in planted_site.files
        if p.startswith(("/p/coffee/", "/p/chelsea/", "/p/rocket/", "/look/"))
    )
    args = ("--recipe", str(tmp_path / "recipe.json"))
    single = _run(planted_site, tmp_path / "single", *args, only=only)
    multi = _run(
        planted_site,
        tmp_path / "multi",
        *args,
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
        only=only,
    )
    s1, s2 = (Stats.from_json((o / "stats.json").read_text()) for o in (single, multi))
    assert s1 == s2 and _digests(single) == _digests(multi)
    # coffee's 11 images but its 5 %-a-side crop, which is past decontamination's threshold
    assert s1.filtered["contaminated"] == 10 and s1.filtered["blocklist"] == 1
    assert (
        s1.filtered["language"] > 0 and s1.duplicate["near_duplicate"] > 0
    )  # short captions: often not "en"
