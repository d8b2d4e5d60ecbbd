"""Evaluation-set decontamination: drop every sample whose bytes or perceptual hash match an
evaluation image, and record which evaluation items were found.

    light | "Decontaminate" >> Decontaminate(DecontaminateConfig(source="eval/digits/"))

`source` is a folder of images (searched recursively), a glob of WebDataset tars, or a text
file of hashes (`ID,PHASH[,SHA256]` per line). Hashing the evaluation images runs in Beam;
their hashes (small: one record per evaluation image) reach every worker as a side input.

An evaluation item that cannot be read (a corrupt image, a malformed hash-list line) is one whose
leaks go unnoticed: each is counted and named in `decontamination.json`, and the job fails before
any sample is matched when they are more than `max_unreadable` of the evaluation set.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from PIL import Image

from pipeline.curation.base import KeepRows, RowFilter
from pipeline.curation.lsh import contiguous_bands, table_keys
from pipeline.io.layout import FOUND_NAME, join_path
from schemas import IMAGE_EXTENSIONS, Reason, split_member_name
from schemas.imagehash import DECODE_ERRORS, hamming, phash

_TAR_END = bytes(2 * tarfile.BLOCKSIZE)  # the end-of-archive marker: two zero blocks


MAX_LISTED = 100  # unreadable evaluation items named in decontamination.json (all are counted)


# What opening and decoding a bad image file can raise in Pillow (as images.decode_and_resize
# catches): not found / truncated / unidentified (OSError), malformed chunks (SyntaxError,
# ValueError, struct.error, IndexError, TypeError, EOFError), and decompression bombs.
class EvalSetUnreadable(ValueError):
    """Too much of the evaluation set could not be read to protect it (one line, for the user)."""


@dataclass(frozen=True)
class DecontaminateConfig:
    source: str | None = None  # folder, tar glob, or hash-list file
    threshold: int = (
        12  # max phash Hamming distance to an evaluation image (as near_dedupe, measured)
    )
    bands: int = 13  # LSH bands over the evaluation hashes (>= threshold + 1: exhaustive)
    # Share of the evaluation items that may be unreadable before the job fails. Each one is an
    # item whose leaks would go unnoticed; 1 % lets a large set carry its few known-broken files,
    # and stops the failures that hit many files at once (Git LFS pointers instead of images, a
    # truncated download, the wrong folder). 0: every item must be readable; 1: no limit.
    max_unreadable: float = 0.01

    def __post_init__(self):
        share = self.max_unreadable
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ValueError(
                f"decontaminate max_unreadable must be a share from 0 to 1 (0.01 = 1 %), got {share!r}"
            )


def eval_item(item_id: str, data: bytes) -> dict:
    """An evaluation image -> {"id", "sha256", "phash"}; raises one of DECODE_ERRORS when unreadable."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (256, 256))
        return {
            "id": item_id,
            "sha256": hashlib.sha256(data).hexdigest(),
            "phash": phash(im.convert("RGB")),
        }


def _is_hex(text: str, digits: int) -> bool:
    return len(text) == digits and all(c in "0123456789abcdef" for c in text)


def parse_hash_line(line: str) -> dict | None:
    """`ID,PHASH[,SHA256]` -> an evaluation item; None for a blank line, a `#` comment or an
    `id,phash,...` header; ValueError when the line is none of these."""
    parts = [p.strip() for p in line.split(",")]
    if parts == [""] or parts[0].startswith("#"):
        return None
    if len(parts) > 1 and parts[1].lower() == "phash":
        return None
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"expected ID,PHASH[,SHA256], got {line.strip()[:80]!r}")
    phash_hex, sha = parts[1].lower(), (parts[2].lower() if len(parts) == 3 else "") or None
    if not _is_hex(phash_hex, 16):
        raise ValueError(f"PHASH {parts[1][:80]!r} is not 16 hex digits")
    if sha is not None and not _is_hex(sha, 64):
        raise ValueError(f"SHA256 {parts[2][:80]!r} is not 64 hex digits")
    return {"id": parts[0], "phash": phash_hex, "sha256": sha}


def unreadable(item: str, error: Exception | str, rest_of_tar: bool = False) -> dict:
    """An evaluation item that could not be read; `rest_of_tar`: a damaged tar's remainder,
    an unknown number of items."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    record = {"item": item, "error": " ".join(text.split())[:300]}
    return {**record, "rest_of_tar": True} if rest_of_tar else record


def _is_image_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def list_sources(source: str) -> list[str]:
    """Files that make up the evaluation set (driver-side listing; hashing happens in Beam)."""
    if source.endswith(".tar") or "*" in source or "{" in source:
        pattern = source
    elif (
        FileSystems.exists(source)
        and not source.endswith(("/", ".txt", ".csv"))
        and _is_image_name(source)
    ):
        return [source]
    elif source.endswith((".txt", ".csv")):
        if not FileSystems.exists(source):
            raise ValueError(f"--decontaminate {source!r} does not exist")
        return [source]
    else:
        pattern = join_path(source, "**")
    files = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    files = sorted(f for f in files if f.endswith(".tar") or _is_image_name(f))
    if not files:
        raise ValueError(f"--decontaminate {source!r} holds no images, tars or hash list")
    return files


def _hash_list(name: str, data: bytes) -> tuple[list[dict], list[dict]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [], [unreadable(name, e)]
    items, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            item = parse_hash_line(line)
        except ValueError as e:
            bad.append(unreadable(f"{name}:{number}", str(e)))
            continue
        if item:
            items.append(item)
    return items, bad


def _hash_tar(name: str, data: bytes) -> tuple[list[dict], list[dict]]:
    items, bad = [], []
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                if member.isfile() and _is_image_name(member.name):
                    item_id = f"{name}:{split_member_name(member.name)[0]}"
                    try:
                        items.append(eval_item(item_id, tar.extractfile(member).read()))
                    except DECODE_ERRORS as e:
                        bad.append(unreadable(item_id, e))
            # tarfile takes a tar cut at (or inside) a member header for a shorter, whole one
            if data[tar.offset : tar.offset + len(_TAR_END)] != _TAR_END:
                raise tarfile.ReadError("no end-of-archive marker: the tar is truncated")
    except (tarfile.TarError, OSError, EOFError) as e:
        bad.append(unreadable(name, f"{type(e).__name__}: {e} (after {len(items)} items)", True))
    return items, bad


def _file_name(path: str, root: str) -> str:
    """How item ids name an evaluation file: its path under the source folder, or (a tar, a
    file matched by a glob) its base name; a tar's items are `NAME:KEY`."""
    relative = path[len(root) :].lstrip("/") if root and path.startswith(root) else ""
    return relative if relative and not path.endswith(".tar") else path.rsplit("/", 1)[-1]


def source_root(source: str) -> str:
    """The folder item ids are relative to (none for a tar)."""
    return "" if source.endswith(".tar") else source.rstrip("/")


def hash_eval_file(path: str, root: str) -> tuple[list[dict], list[dict]]:
    """One evaluation file -> (its items, what of it could not be read): an image, every image
    in a tar, or the lines of a hash list."""
    name = _file_name(path, root)
    try:
        with FileSystems.open(path) as f:
            data = f.read()
    except OSError as e:
        return [], [unreadable(name, e, rest_of_tar=path.endswith(".tar"))]
    if path.endswith((".txt", ".csv")):
        return _hash_list(name, data)
    if path.endswith(".tar"):
        return _hash_tar(name, data)
    try:
        return [eval_item(name, data)], []
    except DECODE_ERRORS as e:
        return [], [unreadable(name, e)]


def eval_images(source: str, item_ids: list[str]) -> dict[str, bytes]:
    """The bytes of the evaluation images item ids name (as `hash_eval_file` named them), for
    showing a match; an item of a hash list, or one no longer there, is left out. The source
    is listed once, a tar read once for all of its items."""
    root = source_root(source)
    files = {_file_name(p, root): p for p in list_sources(source)}
    found, in_tars = {}, {}
    for item_id in item_ids:
        path = files.get(item_id)
        tar_name, _, key = item_id.rpartition(":")
        if path is not None and not path.endswith((".txt", ".csv", ".tar")):
            with FileSystems.open(path) as f:
                found[item_id] = f.read()
        elif tar_name.endswith(".tar") and tar_name in files:
            in_tars.setdefault(files[tar_name], {})[key] = item_id
    for path, wanted in in_tars.items():
        with FileSystems.open(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                key = split_member_name(member.name)[0]
                if member.isfile() and _is_image_name(member.name) and key in wanted:
                    found[wanted[key]] = tar.extractfile(member).read()
    return found


def unreadable_error(
    items: int, bad: list[dict], max_unreadable: float, source: str, report: str | None
) -> str | None:
    """The one-line refusal when too little of the evaluation set was read, else None."""
    where = f"; all are listed in {report}" if report else ""
    damaged = [u["item"] for u in bad if u.get("rest_of_tar")]
    if damaged and max_unreadable < 1:
        return (
            f"evaluation tar {damaged[0]} in {source} is damaged: an unknown number of its "
            f"items could not be read and would go unprotected{where}"
        )
    total = items + len(bad)
    if total == 0:
        return f"the evaluation set {source} holds no items: decontamination would protect nothing"
    share = len(bad) / total
    if share <= max_unreadable:
        return None
    return (
        f"{len(bad)} of {total} evaluation items in {source} could not be read ({share:.1%}), "
        f"more than decontaminate max_unreadable {max_unreadable:.1%} allows; their leaks would "
        f"go unnoticed (first: {bad[0]['item']}){where}"
    )


def build_index(items: list[dict], bands: int) -> tuple[dict, dict]:
    by_sha = {it["sha256"]: it["id"] for it in items if it.get("sha256")}
    by_band: dict[tuple[int, int], list[tuple[str, str]]] = {}
    tables = contiguous_bands(bands)
    for it in items:
        for band in table_keys(int(it["phash"], 16), tables):
            by_band.setdefault(band, []).append((it["id"], it["phash"]))
    return by_sha, by_band


def match(row: dict, index: tuple[dict, dict], cfg: DecontaminateConfig) -> tuple[str, str] | None:
    """-> (evaluation item id, how) for a contaminated row, else None."""
    by_sha, by_band = index
    if row.get("sha256") in by_sha:
        return by_sha[row["sha256"]], "identical bytes"
    if not row.get("phash"):
        return None
    best = None
    for band in table_keys(int(row["phash"], 16), contiguous_bands(cfg.bands)):
        for item_id, h in by_band.get(band, ()):
            d = hamming(row["phash"], h)
            if d <= cfg.threshold and (best is None or (d, item_id) < best):
                best = (d, item_id)
    return (best[1], f"phash distance {best[0]}") if best else None


class _HashEvalFileFn(beam.DoFn):
    """Evaluation files -> items; what cannot be read -> "unreadable", counted."""

    def __init__(self, root: str):
        self.root = root
        self.items = Metrics.counter("decontaminate", "eval_items")
        self.unreadable = Metrics.counter("decontaminate", "unreadable_eval_items")

    def process(self, path):
        items, bad = hash_eval_file(path, self.root)
        self.items.inc(len(items))
        self.unreadable.inc(len(bad))
        yield from items
        for record in bad:
            yield beam.pvalue.TaggedOutput("unreadable", record)


def _checked_eval_set(
    items: list[dict], bad: list[dict], cfg: DecontaminateConfig, output: str | None
) -> dict:
    """-> {"items", "unreadable" (sorted by name)}; raises EvalSetUnreadable, after writing
    what could not be read to OUTPUT/decontamination.json, when too much of the set is lost."""
    bad = sorted(bad, key=lambda u: u["item"])
    report = join_path(output, FOUND_NAME) if output else None
    error = unreadable_error(len(items), bad, cfg.max_unreadable, cfg.source, report)
    if error and output:
        _write_report(output, items=len(items), bad=bad, cfg=cfg, error=error)
    if error:
        raise EvalSetUnreadable(error)
    return {"items": items, "unreadable": bad}


def refusal(output: str) -> str | None:
    """The one line a job's decontamination stage failed with, read back from
    OUTPUT/decontamination.json (a remote runner hands the driver a worker's traceback)."""
    path = join_path(output, FOUND_NAME)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8")).get("error")


_FOUND = "evaluation item "


def found_detail(item_id: str, how: str) -> str:
    """The removal's detail: which evaluation item the sample copies, and how it matched."""
    return f"{_FOUND}{item_id} ({how})"


def found_item(detail: str) -> str:
    """The evaluation item a removal's detail names (the inverse of `found_detail`)."""
    return detail[len(_FOUND) :].rsplit(" (", 1)[0]


class EvalSetMatch(RowFilter):
    """A sample whose bytes or pHash match an evaluation item is removed (`contaminated`)."""

    namespace = "decontaminate"

    def __init__(self, cfg: DecontaminateConfig):
        self.cfg = cfg

    def setup(self):
        self._index = None
        self._eval_set_id = None

    def keep(self, row, eval_set):
        if self._index is None or self._eval_set_id != id(eval_set):  # built once per worker
            self._index = build_index(eval_set["items"], self.cfg.bands)
            self._eval_set_id = id(eval_set)
        found = match(row, self._index, self.cfg)
        if found is None:
            return True, None, None
        return False, Reason.CONTAMINATED, found_detail(*found)


def _write_report(
    output: str, *, items: int, bad: list[dict], cfg: DecontaminateConfig, **rest
) -> None:
    report = {
        "eval_items": items,  # items read, and searched for
        "unreadable_items": len(bad),  # items whose leaks could not be searched for
        "unreadable": bad[:MAX_LISTED],  # the first ones by name: {"item", "error"}
        "max_unreadable": cfg.max_unreadable,
        **rest,
    }
    with FileSystems.create(join_path(output, FOUND_NAME)) as f:
        f.write(json.dumps(report, indent=1).encode("utf-8"))


def _write_found(counts: list, eval_set: dict, cfg: DecontaminateConfig, output: str) -> None:
    _write_report(
        output,
        items=len(eval_set["items"]),
        bad=eval_set["unreadable"],
        cfg=cfg,
        found=dict(sorted(counts)),
        samples_removed=sum(n for _, n in counts),
    )


class Decontaminate(beam.PTransform):
    """Light rows -> {"kept", "removed"}; with `output`, writes OUTPUT/decontamination.json."""

    def __init__(self, cfg: DecontaminateConfig, output: str | None = None):
        super().__init__()
        if not cfg.source:
            raise ValueError(
                "the decontaminate stage needs a source of evaluation images (--decontaminate PATH)"
            )
        self.cfg, self.output = cfg, output
        self.files = list_sources(cfg.source)
        self.root = source_root(cfg.source)

    def expand(self, light):
        hashed = (
            light.pipeline
            | "EvalFiles" >> beam.Create(self.files)
            | "Reshuffle" >> beam.Reshuffle()
            | "HashEvalImages"
            >> beam.ParDo(_HashEvalFileFn(self.root)).with_outputs("unreadable", main="items")
        )
        # Matching waits on the check: a job over an unreadable evaluation set stops before it.
        eval_set = (
            hashed.items
            | "AllEvalItems" >> beam.combiners.ToList()
            | "CheckReadable"
            >> beam.Map(
                _checked_eval_set,
                bad=beam.pvalue.AsList(hashed.unreadable),
                cfg=self.cfg,
                output=self.output,
            )
        )
        eval_side = beam.pvalue.AsSingleton(eval_set)
        out = light | "Match" >> KeepRows(EvalSetMatch(self.cfg), eval_set=eval_side)
        if self.output:
            _ = (
                out["removed"]
                | "FoundItems" >> beam.Map(lambda d: found_item(d["error"]))
                | "CountFound" >> beam.combiners.Count.PerElement()
                | "FoundList" >> beam.combiners.ToList()
                | "WriteFound"
                >> beam.Map(_write_found, eval_set=eval_side, cfg=self.cfg, output=self.output)
            )
        return out
