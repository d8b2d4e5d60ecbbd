"""Filters and caption handling: pure checks first, then the stages inside a real job."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.curation.captions import LanguageDetector, boilerplate_reason, clean_caption
from pipeline.curation.filters import FilterConfig, blocklist_pattern, keep
from pipeline.jobs.curate import main
from schemas import Stats

# Real alt-text-like captions in several languages (written for this test, not machine output).
MULTILINGUAL = {
    "en": "A golden retriever puppy playing with a red ball in the garden",
    "de": "Ein kleiner Hund spielt im Garten mit einem roten Ball",
    "fr": "Un petit chien joue avec une balle rouge dans le jardin",
    "es": "Un perro pequeño juega con una pelota roja en el jardín",
    "it": "Un piccolo cane gioca con una palla rossa nel giardino",
    "ru": "Маленькая собака играет с красным мячом в саду",
    "zh": "一只小狗在花园里玩红色的球",
    "ja": "庭で赤いボールで遊ぶ子犬",
    "pt": "Um cachorro pequeno brinca com uma bola vermelha no jardim",
    "nl": "Een kleine hond speelt met een rode bal in de tuin",
}


def _row(**kw):
    row = {
        "key": "k",
        "url": "http://a.com/img/sunset_beach.jpg",
        "caption": "a cat on a sofa",
        "original_width": 640,
        "original_height": 480,
    }
    row.update(kw)
    return row


@pytest.mark.parametrize(
    ("row", "cfg", "reason"),
    [
        (_row(original_width=150), FilterConfig(min_side=200), "too_small"),
        (
            _row(original_width=100, original_height=100),
            FilterConfig(min_pixels=20_000),
            "too_few_pixels",
        ),
        (
            _row(original_width=2000, original_height=400),
            FilterConfig(max_aspect_ratio=3),
            "aspect_ratio",
        ),
        (_row(caption=None), FilterConfig(require_caption=True), "missing_caption"),
        (_row(caption="cat"), FilterConfig(min_caption_chars=5), "caption_too_short"),
        (_row(caption="x" * 300), FilterConfig(max_caption_chars=200), "caption_too_long"),
        (_row(caption="a cat"), FilterConfig(min_words=3), "too_few_words"),
        (_row(caption="IMG_2041.JPG"), FilterConfig(drop_boilerplate=True), "boilerplate_caption"),
        (_row(caption="Sunset Beach"), FilterConfig(drop_boilerplate=True), "boilerplate_caption"),
        (_row(language="de"), FilterConfig(languages=("en",)), "language"),
    ],
)
def test_each_rule_has_its_reason(row, cfg, reason):
    assert keep(row, cfg)[:2] == (False, reason)


def test_defaults_keep_everything():
    assert keep(_row(caption=None, original_width=1, original_height=1), FilterConfig()) == (
        True,
        None,
        None,
    )


def test_blocklist_matches_whole_words_only():
    blocked = blocklist_pattern(("ass", "free shipping"))
    assert (
        keep(_row(caption="Buy now, FREE  shipping"), FilterConfig(), blocked)[1] is None
    )  # two spaces: no phrase
    assert keep(_row(caption="buy now free shipping!"), FilterConfig(), blocked)[1] == "blocklist"
    assert keep(_row(caption="a glass of water on a class desk"), FilterConfig(), blocked)[0]


@pytest.mark.parametrize(
    ("caption", "why"),
    [
        ("https://cdn.example.com/x.jpg", "url"),
        ("DSC_0012", "file name"),
        ("photo-2019.png", "file name"),
        ("1920 x 1080", "dimensions"),
        ("800×600px", "dimensions"),
        ("Untitled", "generic"),
        ("image", "generic"),
        ("No image", "generic"),
        ("a photo of a red bicycle", None),
        ("Picture of the Eiffel Tower at night", None),
    ],
)
def test_boilerplate_reason(caption, why):
    assert boilerplate_reason(caption, "http://a.com/x/12345.jpg") == why


def test_clean_caption():
    assert clean_caption("Caf&eacute; &amp;amp; bar\u00a0<b>menu</b>\n") == "Café & bar menu"
    assert clean_caption("CafÃ© au lait") == "Café au lait"  # mojibake repaired
    assert clean_caption("  e\u0301te\u0301  ") == "été"  # NFC


@pytest.fixture(scope="module")
def detector():
    return LanguageDetector()


def test_language_detection_on_real_captions(detector):
    got = {lang: detector.detect(text)[0] for lang, text in MULTILINGUAL.items()}
    assert got == {lang: lang for lang in MULTILINGUAL}
    assert detector.detect("12345 !!!") == (None, 0.0)


def test_filters_inside_a_job(site, tmp_path):
    captions = {
        **MULTILINGUAL,
        "block": "cheap replica watches, free shipping",
        "boiler": "IMG_0001.jpg",
    }
    paths = ["/img/astronaut.jpg", "/img/chelsea.jpg", "/img/coffee.jpg", "/img/rocket.jpg", "/img/camera.jpg",
             "/img/china.jpg", "/img/flower.jpg", "/img/hubble_deep_field.jpg", "/img/astronaut.png", "/img/chelsea.png",
             "/img/coffee.png", "/img/rocket.png"]  # fmt: skip
    rows = [{"url": site.url(p), "caption": c} for p, c in zip(paths, captions.values())]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    (tmp_path / "block.txt").write_text("# spam\nreplica watches\n")
    recipe = {
        "stages": ["filters"],
        "filters": {
            "languages": ["en", "de"],
            "drop_boilerplate": True,
            "blocklist": str(tmp_path / "block.txt"),
        },
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    out = tmp_path / "out"
    assert (
        main(
            [
                "--input",
                str(tmp_path / "urls.parquet"),
                "--output",
                str(out),
                "--recipe",
                str(tmp_path / "recipe.json"),
                "--allow-private-networks",
            ]
        )
        == 0
    )
    stats = Stats.from_json((out / "stats.json").read_text())
    assert stats.written == 2  # the English and the German caption
    assert stats.filtered == {"language": 8, "blocklist": 1, "boilerplate_caption": 1}
    written = pa.concat_tables(
        [pq.read_table(p) for p in (out / "shards").glob("*.parquet")]
    ).to_pylist()
    assert sorted(r["language"] for r in written) == ["de", "en"]
