"""The audit gallery: for every reason rows were removed, a few of them to look at, each beside
what decided it -- a duplicate beside the survivor it copies (with their hash distances), a
contaminated sample beside the evaluation image it matched, and the CLIP-score cut seen from
both sides (the lowest- and highest-scored pairs kept and dropped). Thumbnails are small JPEGs
in OUTPUT/report/, their records in OUTPUT/report/gallery.json; report.html shows them.

    inputs = {"rejected": failed_rows, "removed": decisions, "kept": survivors, "images": ok_rows}
    _ = inputs | "Gallery" >> Gallery(GalleryConfig("out/", eval_source="eval/"))

Bounded and the same on every run and runner: a reason's sample is the `per_reason` rows whose
seeded hash of the key is smallest (a bottom-k sample: one Beam combiner, BottomKPerSection, whose
accumulators hold k rows a reason whatever the row count), and the CLIP-score extremes are the k
lowest and highest scores on each side of the cut. The keys are chosen from the light rows and
decisions first; then only the chosen rows' image bytes are read, where the job has them (in
the curate job's shard writer, ShowRow; or `fetch` from the source tars), so no image moves for
the gallery but its own thumbnails.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from PIL import Image

from pipeline.curation.decontaminate import eval_images, found_item
from pipeline.io.layout import GALLERY_NAME, REPORT_DIR, join_path
from pipeline.scoring.clip_filter import detail_score
from schemas import Reason, Status
from schemas.imagehash import DECODE_ERRORS, hamming

log = logging.getLogger(__name__)

GALLERY_VERSION = 1
# The CLIP-score extremes: (section, side of the cut, ascending by score?)
CLIP_SECTIONS = (
    ("clip_score:kept_lowest", "kept", True),
    ("clip_score:kept_highest", "kept", False),
    ("clip_score:dropped_highest", "dropped", False),
    ("clip_score:dropped_lowest", "dropped", True),
)
# What the gallery keeps of a row (never embeddings; long texts cut).
_FIELDS = (
    "key", "url", "caption", "status", "reason", "error", "duplicate_of", "phash", "dhash",
    "clip_score", "original_width", "original_height",
)  # fmt: skip
_TEXT_LIMIT = 300


@dataclass(frozen=True)
class GalleryConfig:
    output: str  # the dataset folder: thumbnails go to OUTPUT/report/
    per_reason: int = 8  # rows shown per removal reason, and per CLIP-score extreme
    seed: int = 0  # of the sample: another seed, other rows
    thumb_side: int = 128  # px, a thumbnail's longer side (smaller images keep their size)
    eval_source: str | None = None  # decontamination's evaluation set, to show what matched

    def __post_init__(self):
        if self.per_reason < 1 or self.thumb_side < 8:
            raise ValueError("gallery per_reason must be >= 1 and thumb_side >= 8")


def sample_order(key: str, seed: int) -> int:
    """A row's place in its reason's sample: a seeded 64-bit hash of its key."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def slim_row(row: dict) -> dict:
    out = {f: row.get(f) for f in _FIELDS}
    for f in ("url", "caption", "error"):
        if isinstance(out[f], str) and len(out[f]) > _TEXT_LIMIT:
            out[f] = out[f][:_TEXT_LIMIT] + "…"
    return out


def _reason_pick(row: dict, seed: int) -> tuple[str, tuple]:
    return f"{row['status']}:{row['reason']}", (sample_order(row["key"], seed), row["key"], row)


def rejected_candidates(row: dict, seed: int):
    """A row not written before curation (failed, invalid, a URL duplicate: no image) ->
    (its reason's section, (order, key, slim row))."""
    if row.get("key") is not None:  # its key may be a survivor's (a URL duplicate): no image
        yield _reason_pick({**slim_row(row), "uncurated": True}, seed)


def removed_candidates(decision: dict, seed: int):
    """A curation decision -> its reason's section, ordered by the seeded hash; a CLIP-score
    removal also the extremes of the dropped side, ordered by the score its detail records."""
    row = slim_row(decision)
    score = detail_score(row["error"]) if row["reason"] == Reason.LOW_CLIP_SCORE else None
    row["clip_score"] = score
    yield _reason_pick(row, seed)
    if score is not None:
        for section, side, ascending in CLIP_SECTIONS:
            if side == "dropped":
                yield section, ((score if ascending else -score), row["key"], row)


def kept_candidates(row: dict):
    """A survivor with a CLIP score -> the extremes of the kept side, ordered by score."""
    score = row.get("clip_score")
    if score is not None:
        for section, side, ascending in CLIP_SECTIONS:
            if side == "kept":
                yield section, ((score if ascending else -score), row["key"], slim_row(row))


def _rank(item: tuple) -> tuple:
    return item[0], item[1]  # (order, key): unique, so rows are never compared


class BottomKPerSection(beam.CombineFn):
    """(section, (order, key, row)) -> {section: its k smallest by (order, key), ascending}: a
    bottom-k sample per section whose accumulators hold at most k rows a section, merged the
    same whatever the bundles (the k smallest of a union are the k smallest of its parts')."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        section, item = element
        kept = acc.setdefault(section, [])
        if len(kept) < self.k or _rank(item) < _rank(kept[-1]):
            bisect.insort(kept, item, key=_rank)
            del kept[self.k :]
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            for section, items in acc.items():
                out[section] = sorted(out.get(section, []) + items, key=_rank)[: self.k]
        return out

    def extract_output(self, acc):
        return acc


def shown_keys(sections: dict[str, list]) -> frozenset[str]:
    """The keys whose images the gallery shows: its rows' (not of rows that never had one)
    and the survivors they duplicate."""
    keys = set()
    for items in sections.values():
        for _, key, row in items:
            mine = None if row.get("uncurated") else key
            keys.update(k for k in (mine, row.get("duplicate_of")) if k)
    return frozenset(keys)


def thumbnail(data: bytes, side: int) -> tuple[bytes, list[int]]:
    """Image bytes -> (a JPEG whose longer side is at most `side` px (never enlarged), its
    [width, height])."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (side, side))
        im = im.convert("RGB")
        im.thumbnail((side, side))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
        return out.getvalue(), list(im.size)


def thumb_path(kind: str, name: str) -> str:
    """Where a thumbnail goes, relative to OUTPUT (report.html's folder): report/KIND/HASH.jpg
    (a key or an evaluation item id may hold any character)."""
    return f"{REPORT_DIR}/{kind}/{hashlib.sha256(name.encode()).hexdigest()[:20]}.jpg"


def _save(output: str, relative: str, data: bytes) -> None:
    with FileSystems.create(join_path(output, *relative.split("/"))) as f:
        f.write(data)


class ShowRow:
    """A sampled row with its image bytes -> (key, what the gallery shows of it), its thumbnail
    written; an image that cannot be decoded is shown without one (counted). Called where the
    bytes are: the Thumbnails step here, or the shard writer (WriteShards' `show`)."""

    def __init__(self, cfg: GalleryConfig):
        self.cfg = cfg

    def __call__(self, row: dict) -> tuple[str, dict]:
        shown = slim_row(row)
        if row.get("_image"):
            try:
                jpeg, size = thumbnail(row["_image"], self.cfg.thumb_side)
            except DECODE_ERRORS:
                Metrics.counter("gallery", "undecodable").inc()
            else:
                path = thumb_path("thumbs", row["key"])
                _save(self.cfg.output, path, jpeg)
                shown.update(thumb=path, thumb_size=size)
                Metrics.counter("gallery", "thumbnails").inc()
        return row["key"], shown


def eval_thumbnails(sections: dict[str, list], cfg: GalleryConfig):
    """The sampled contaminated rows -> (evaluation item id, its thumbnail's path), each read
    from the evaluation set (a hash list has no image to show)."""
    picked = sections.get(f"{Status.FILTERED}:{Reason.CONTAMINATED}", [])
    items = sorted({found_item(row["error"]) for *_, row in picked if row.get("error")})
    images = eval_images(cfg.eval_source, items)  # an item gone since it was hashed: none
    for item in items:
        try:
            jpeg, size = thumbnail(images[item], cfg.thumb_side) if item in images else (None, None)
        except DECODE_ERRORS as e:  # unreadable since it was hashed: shown without a picture
            log.warning("gallery: evaluation item %s could not be shown: %s", item, e)
            continue
        if jpeg is not None:
            path = thumb_path("eval", item)
            _save(cfg.output, path, jpeg)
            yield item, {"thumb": path, "thumb_size": size}


def _distances(row: dict, other: dict) -> dict:
    """{"phash": bits, "dhash": bits} between two rows' hashes (those both have)."""
    return {h: hamming(row[h], other[h]) for h in ("phash", "dhash") if row.get(h) and other.get(h)}


def gallery_record(sections: dict, shown: dict, evals: dict, cfg: GalleryConfig) -> dict:
    """The sampled sections, the shown rows (key -> slim row with its `thumb`) and the
    evaluation thumbnails -> what gallery.json holds: each item with its thumbnail, and its
    survivor (with the hash distances between them) or the evaluation item it matched."""
    out = []
    for section, picked in sorted(sections.items()):
        items = []
        for _, key, row in sorted(picked, key=_rank):
            # the image's row as the job read it, what the sampled row knows, what was decided
            decided = {f: row[f] for f in ("status", "reason", "error", "duplicate_of")}
            image_row = {} if row.get("uncurated") else shown.get(key, {})
            known = {k: v for k, v in row.items() if v is not None}
            item = {**row, **image_row, **known, **decided}
            survivor = row.get("duplicate_of")
            if survivor:
                other = shown.get(survivor, {"key": survivor})
                item["survivor"] = other
                item["distances"] = _distances(item, other)
            if row.get("reason") == Reason.CONTAMINATED and row.get("error"):
                item_id = found_item(row["error"])
                item["eval"] = {"id": item_id, **evals.get(item_id, {})}
            items.append(item)
        out.append({"section": section, "items": items})
    return {
        "version": GALLERY_VERSION,
        "seed": cfg.seed,
        "per_reason": cfg.per_reason,
        "sections": out,
    }


def write_gallery(sections: dict, shown: dict, evals: dict, cfg: GalleryConfig) -> str:
    record = gallery_record(sections, shown, evals, cfg)
    path = join_path(cfg.output, *GALLERY_NAME.split("/"))
    with FileSystems.create(path) as f:
        f.write(json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))
    return path


def read_gallery(output: str) -> dict | None:
    path = join_path(output, *GALLERY_NAME.split("/"))
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


class GallerySample(beam.PTransform):
    """{"rejected": rows not written that curation never saw (no image), "removed": the
    curation stages' decisions, "kept": the survivors' light rows} -> the sample, one element:
    {section: [(order, key, row)]}."""

    def __init__(self, cfg: GalleryConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcolls):
        seed = self.cfg.seed
        return (
            (
                pcolls["rejected"]
                | "RejectedCandidates" >> beam.FlatMap(rejected_candidates, seed=seed),
                pcolls["removed"]
                | "RemovedCandidates" >> beam.FlatMap(removed_candidates, seed=seed),
                pcolls["kept"] | "KeptCandidates" >> beam.FlatMap(kept_candidates),
            )
            | "AllCandidates" >> beam.Flatten()
            | "SamplePerSection" >> beam.CombineGlobally(BottomKPerSection(self.cfg.per_reason))
        )


class Gallery(beam.PTransform):
    """{"rejected", "removed", "kept" (GallerySample's inputs), "images": rows with their
    `_image` bytes (or, with `fetch`, light rows whose bytes it reads)} -> OUTPUT/report/
    gallery.json and the thumbnails. Or {"sample": GallerySample's output, "shown": (key, shown
    row) from ShowRow, made where the bytes already are (the curate job's shard writer)}.

    Every input is upstream of the shard writer, so the thumbnails' side input (the sampled
    keys) never waits on it. One more rule, for Beam's FnApiRunner (DirectRunner): "images" must
    not be a PCollection that a curation stage also reads unfused, after a side input of its own
    (the runner holds that stage's output until every reader has read the PCollection, and the
    thumbnails' reader waits on that output: a deadlock). The rows curation starts from, as
    their producer fuses with LightRows, and rows downstream of the decisions are safe.
    `fetch`: a PTransform from the sampled light rows to the same rows with `_image`, for a
    job whose images are not in the pipeline (webpairs select reads them from the source tars).
    """

    def __init__(self, cfg: GalleryConfig, fetch: beam.PTransform | None = None):
        super().__init__()
        self.cfg, self.fetch = cfg, fetch

    def expand(self, pcolls):
        cfg = self.cfg
        if "sample" in pcolls:
            sections, shown = pcolls["sample"], pcolls["shown"]
        else:
            sections = pcolls | "Sample" >> GallerySample(cfg)
            wanted = beam.pvalue.AsSingleton(sections | "ShownKeys" >> beam.Map(shown_keys))
            sampled = pcolls["images"] | "SampledRows" >> beam.Filter(
                lambda r, w: r["key"] in w, w=wanted
            )
            if self.fetch is not None:
                sampled = sampled | "FetchImages" >> self.fetch
            shown = sampled | "Thumbnails" >> beam.Map(ShowRow(cfg))
        evals = {}
        if cfg.eval_source:
            evals = beam.pvalue.AsDict(
                sections | "EvalThumbnails" >> beam.FlatMap(eval_thumbnails, cfg=cfg)
            )
        return sections | "WriteGallery" >> beam.Map(
            write_gallery, shown=beam.pvalue.AsDict(shown), evals=evals, cfg=cfg
        )
