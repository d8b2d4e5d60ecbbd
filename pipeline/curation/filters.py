"""Filters: one pure check per rule, `keep(row) -> (bool, reason, detail)`, and the Filter stage
that counts every removal by reason.

    keep(row, FilterConfig(min_side=200, languages=("en",)))  # -> (False, "too_small", "150x90 ...")

DataComp's "basic filtering" is the preset `datacomp_basic` in pipeline/curation/recipe.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import apache_beam as beam

from pipeline.curation.base import KeepRows, RowFilter
from pipeline.curation.captions import boilerplate_reason, words
from pipeline.io.url_lists import read_list_file
from schemas import Reason


@dataclass(frozen=True)
class FilterConfig:
    min_side: int = 0  # smaller side of the original image, px
    min_pixels: int = 0  # width x height of the original image
    max_aspect_ratio: float | None = None  # larger side / smaller side
    require_caption: bool = False
    min_caption_chars: int = 0
    max_caption_chars: int | None = None
    min_words: int = 0
    max_words: int | None = None
    languages: tuple[str, ...] = ()  # allow-list of ISO 639-1 codes; () = any language
    blocklist: str | None = None  # file of terms (one per line, '#' comments); any Beam filesystem
    drop_boilerplate: bool = False  # captions that are a URL, a file name, dimensions, "image", ...

    @property
    def needs_language(self) -> bool:
        return bool(self.languages)


def load_blocklist(path: str | None) -> tuple[str, ...]:
    return read_list_file(path, "blocklist")


def blocklist_pattern(terms: tuple[str, ...]) -> re.Pattern | None:
    """Whole-word (or whole-phrase) matches, case-insensitive."""
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def check_image(row: dict, cfg: FilterConfig) -> tuple[str, str] | None:
    w, h = row.get("original_width") or 0, row.get("original_height") or 0
    if min(w, h) < cfg.min_side:
        return Reason.TOO_SMALL, f"{w}x{h}: smaller side under {cfg.min_side}"
    if w * h < cfg.min_pixels:
        return Reason.TOO_FEW_PIXELS, f"{w}x{h}: under {cfg.min_pixels} pixels"
    if cfg.max_aspect_ratio is not None and max(w, h) > cfg.max_aspect_ratio * max(1, min(w, h)):
        return Reason.ASPECT_RATIO, f"{w}x{h}: aspect ratio over {cfg.max_aspect_ratio}"
    return None


def check_caption(
    row: dict, cfg: FilterConfig, blocked: re.Pattern | None = None
) -> tuple[str, str] | None:
    caption = (row.get("caption") or "").strip()
    if not caption:
        return (
            (Reason.MISSING_CAPTION, "no caption")
            if cfg.require_caption or cfg.min_caption_chars or cfg.min_words
            else None
        )
    n_chars, n_words = len(caption), len(words(caption))
    if n_chars < cfg.min_caption_chars:
        return Reason.CAPTION_TOO_SHORT, f"{n_chars} characters, under {cfg.min_caption_chars}"
    if cfg.max_caption_chars is not None and n_chars > cfg.max_caption_chars:
        return Reason.CAPTION_TOO_LONG, f"{n_chars} characters, over {cfg.max_caption_chars}"
    if n_words < cfg.min_words:
        return Reason.TOO_FEW_WORDS, f"{n_words} words, under {cfg.min_words}"
    if cfg.max_words is not None and n_words > cfg.max_words:
        return Reason.TOO_MANY_WORDS, f"{n_words} words, over {cfg.max_words}"
    if cfg.drop_boilerplate:
        why = boilerplate_reason(caption, row.get("url"))
        if why:
            return Reason.BOILERPLATE_CAPTION, f"caption is {why}: {caption[:60]!r}"
    if blocked is not None:
        m = blocked.search(caption)
        if m:
            return Reason.BLOCKLIST, f"blocked term {m.group(0)!r}"
    if cfg.languages and row.get("language") not in cfg.languages:
        return Reason.LANGUAGE, f"language {row.get('language')} not in {','.join(cfg.languages)}"
    return None


def keep(
    row: dict, cfg: FilterConfig, blocked: re.Pattern | None = None
) -> tuple[bool, str | None, str | None]:
    failed = check_image(row, cfg) or check_caption(row, cfg, blocked)
    return (True, None, None) if failed is None else (False, failed[0], failed[1])


class CaptionAndImageRules(RowFilter):
    """Every rule of FilterConfig; the blocklist is compiled once per worker."""

    namespace = "filters"

    def __init__(self, cfg: FilterConfig, terms: tuple[str, ...]):
        self.cfg, self.terms = cfg, terms

    def setup(self):
        self._blocked = blocklist_pattern(self.terms)

    def keep(self, row):
        return keep(row, self.cfg, self._blocked)


class Filter(beam.PTransform):
    """Light rows -> {"kept", "removed"}: every rule of FilterConfig, each removal counted by reason."""

    def __init__(self, cfg: FilterConfig):
        super().__init__()
        self.cfg = cfg
        self.terms = load_blocklist(cfg.blocklist)  # read once, when the graph is built

    def expand(self, light):
        return light | "Rules" >> KeepRows(CaptionAndImageRules(self.cfg, self.terms))
