"""Caption clean-up, boilerplate detection and language identification: pure functions,
then the AnnotateCaptions stage (on full rows, before curation).

    clean_caption("Caf&eacute;   &amp; bar\\u00a0<b>menu</b>")   # -> 'Café & bar menu'
    boilerplate_reason("IMG_2041.JPG", url)                       # -> 'file name'
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import Status

_TAG = re.compile(r"</?[a-zA-Z][^<>]{0,200}>")


_SPACE = re.compile(r"\s+")


_URL = re.compile(r"^(https?://|www\.)\S+$", re.IGNORECASE)


_FILE_NAME = re.compile(
    r"^[\w\-.()\[\] ]+\.(jpe?g|png|gif|webp|bmp|tiff?|heic|avif|svg)$", re.IGNORECASE
)


_CAMERA_NAME = re.compile(
    r"^(img|dsc|dscn|dscf|dcim|pxl|gopr|mvimg|photo|image|pic|screenshot)[\s_\-]*\d[\d_\- ]*$",
    re.IGNORECASE,
)


_DIMENSIONS = re.compile(r"^\d{2,5}\s*(px)?\s*[x×*]\s*\d{2,5}\s*(px)?$", re.IGNORECASE)


_GENERIC = frozenset(
    {
        "image", "images", "photo", "photos", "picture", "pictures", "pic", "pics", "img", "untitled",
        "untitled image", "thumbnail", "thumb", "default", "placeholder", "no image", "image not found",
        "not found", "logo", "icon", "banner", "spacer", "blank", "null", "none", "undefined", "nan",
        "loading", "click here", "click to enlarge", "view image", "download", "stock photo",
        "stock image", "photograph", "unknown",
    }
)  # fmt: skip


def clean_caption(text: str | None) -> str | None:
    """HTML entities and tags, mojibake (ftfy), Unicode NFC and whitespace, fixed."""
    if text is None:
        return None
    import ftfy

    out = text
    for _ in range(2):  # "&amp;eacute;" is escaped twice
        unescaped = html.unescape(out)
        if unescaped == out:
            break
        out = unescaped
    out = _TAG.sub(" ", out)
    out = ftfy.fix_text(out, normalization="NFC")
    out = unicodedata.normalize("NFC", out)
    return _SPACE.sub(" ", out).strip()


def words(text: str | None) -> list[str]:
    return (text or "").split()


def boilerplate_reason(caption: str | None, url: str | None = None) -> str | None:
    """Why a caption says nothing about its image ("url", "file name", ...), or None."""
    if not caption or not caption.strip():
        return None
    c = caption.strip()
    if _URL.match(c):
        return "url"
    if _FILE_NAME.match(c) or _CAMERA_NAME.match(c):
        return "file name"
    if _DIMENSIONS.match(c):
        return "dimensions"
    bare = re.sub(r"[\d\W_]+", " ", c.casefold()).strip()
    if not bare or bare in _GENERIC:
        return "generic"
    if url:
        stem = unquote(urlsplit(url).path.rsplit("/", 1)[-1]).rsplit(".", 1)[0]
        if (
            len(stem) >= 3
            and re.sub(r"[\W_]+", " ", stem).strip().casefold()
            == re.sub(r"[\W_]+", " ", c).strip().casefold()
        ):
            return "file name"
    return None


class LanguageDetector:
    """lingua's detector (models ship inside the package; nothing is fetched), built lazily.

    Its models take ~1.3 GB once loaded: build one per worker process, in DoFn.setup().
    """

    def __init__(self, languages: tuple[str, ...] = ()):
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

        if languages:
            try:
                langs = [
                    Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper()))
                    for code in languages
                ]
            except AttributeError as e:
                raise ValueError(f"unknown ISO 639-1 language code in {languages}: {e}") from None
            builder = (
                LanguageDetectorBuilder.from_languages(*langs)
                if len(langs) > 1
                else LanguageDetectorBuilder.from_all_languages()
            )
        else:
            builder = LanguageDetectorBuilder.from_all_languages()
        self._detector = builder.build()

    def detect(self, text: str | None) -> tuple[str | None, float]:
        """-> (ISO 639-1 code, confidence), or (None, 0.0) when nothing can be said."""
        if not text or not any(ch.isalpha() for ch in text):
            return None, 0.0
        values = self._detector.compute_language_confidence_values(text)
        if not values:
            return None, 0.0
        top = values[0]
        return top.language.iso_code_639_1.name.lower(), float(top.value)


@dataclass(frozen=True)
class CaptionConfig:
    clean: bool = False  # rewrite captions with clean_caption() before they are written
    detect_language: bool = False  # fill `language` (needed by a language filter)
    candidate_languages: tuple[str, ...] = ()  # restrict detection to these (faster); () = all


class _AnnotateCaptionsFn(beam.DoFn):
    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.changed = Metrics.counter("captions", "cleaned")

    def setup(self):
        self._detector = (
            LanguageDetector(self.cfg.candidate_languages) if self.cfg.detect_language else None
        )

    def process(self, row):
        if row["status"] == Status.OK:
            if self.cfg.clean and row.get("caption") is not None:
                cleaned = clean_caption(row["caption"])
                if cleaned != row["caption"]:
                    self.changed.inc()
                    row = {**row, "caption": cleaned}
            if self._detector is not None:
                row = {**row, "language": self._detector.detect(row.get("caption"))[0]}
        yield row


class AnnotateCaptions(beam.PTransform):
    """Rows -> rows with cleaned captions and a detected `language` (as configured)."""

    def __init__(self, cfg: CaptionConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, rows):
        return rows | "Annotate" >> beam.ParDo(_AnnotateCaptionsFn(self.cfg))
