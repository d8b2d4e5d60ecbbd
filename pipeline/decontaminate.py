"""Evaluation-set decontamination: drop every sample whose bytes or perceptual hash match an
evaluation image, and record which evaluation items were found.

    light | "Decontaminate" >> Decontaminate(DecontaminateConfig(source="eval/digits/"))

`source` is a folder of images (searched recursively), a glob of WebDataset tars, or a text
file of hashes (`ID,PHASH[,SHA256]` per line). Hashing the evaluation images runs in Beam;
their hashes (small: one record per evaluation image) reach every worker as a side input.
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

from pipeline.lsh import contiguous_bands, table_keys
from pipeline.paths import join_path
from pipeline.results import decision
from schemas import IMAGE_EXTENSIONS, Reason, Status, split_member_name
from schemas.imagehash import hamming, phash

FOUND_NAME = "decontamination.json"


@dataclass(frozen=True)
class DecontaminateConfig:
    source: str | None = None  # folder, tar glob, or hash-list file
    threshold: int = (
        12  # max phash Hamming distance to an evaluation image (as near_dedupe, measured)
    )
    bands: int = 13  # LSH bands over the evaluation hashes (>= threshold + 1: exhaustive)


def eval_item(item_id: str, data: bytes) -> dict | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (256, 256))
            return {
                "id": item_id,
                "sha256": hashlib.sha256(data).hexdigest(),
                "phash": phash(im.convert("RGB")),
            }
    except Exception:  # an unreadable evaluation file cannot contaminate anything
        return None


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


def hash_eval_file(path: str, root: str) -> list[dict]:
    """One evaluation file -> its items: an image, every image in a tar, or the lines of a hash list."""
    with FileSystems.open(path) as f:
        data = f.read()
    if path.endswith((".txt", ".csv")):
        items = []
        for line in data.decode("utf-8").splitlines():
            parts = [p.strip() for p in line.split(",")]
            if parts and parts[0] and not parts[0].startswith("#") and len(parts) >= 2:
                items.append(
                    {
                        "id": parts[0],
                        "phash": parts[1],
                        "sha256": parts[2] if len(parts) > 2 else None,
                    }
                )
        return items
    if path.endswith(".tar"):
        items = []
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                if member.isfile() and _is_image_name(member.name):
                    item = eval_item(
                        f"{path.rsplit('/', 1)[-1]}:{split_member_name(member.name)[0]}",
                        tar.extractfile(member).read(),
                    )
                    if item:
                        items.append(item)
        return items
    item = eval_item(path[len(root) :].lstrip("/") if path.startswith(root) else path, data)
    return [item] if item else []


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


class _DecontaminateFn(beam.DoFn):
    def __init__(self, cfg: DecontaminateConfig):
        self.cfg = cfg
        self.removed = Metrics.counter("decontaminate", "contaminated")

    def setup(self):
        self._index = None
        self._items_id = None

    def process(self, row, items):
        if self._index is None or self._items_id != id(items):  # built once per worker
            self._index, self._items_id = build_index(list(items), self.cfg.bands), id(items)
        found = match(row, self._index, self.cfg)
        if found is None:
            yield row
            return
        self.removed.inc()
        item_id, how = found
        yield beam.pvalue.TaggedOutput("found", item_id)
        yield beam.pvalue.TaggedOutput(
            "removed",
            decision(
                row["key"],
                Status.FILTERED,
                Reason.CONTAMINATED,
                error=f"evaluation item {item_id} ({how})",
            ),
        )


def _write_found(counts: list, total: int, output: str) -> None:
    report = {
        "eval_items": total,
        "found": dict(sorted(counts)),
        "samples_removed": sum(n for _, n in counts),
    }
    with FileSystems.create(join_path(output, FOUND_NAME)) as f:
        f.write(json.dumps(report, indent=1).encode("utf-8"))


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
        root = cfg.source if not cfg.source.endswith(".tar") else ""
        self.root = root.rstrip("/")

    def expand(self, light):
        root = self.root
        items = (
            light.pipeline
            | "EvalFiles" >> beam.Create(self.files)
            | "Reshuffle" >> beam.Reshuffle()
            | "HashEvalImages" >> beam.FlatMap(hash_eval_file, root=root)
        )
        out = light | "Match" >> beam.ParDo(
            _DecontaminateFn(self.cfg), items=beam.pvalue.AsList(items)
        ).with_outputs("removed", "found", main="kept")
        if self.output:
            total = items | "CountEval" >> beam.combiners.Count.Globally()
            _ = (
                out.found
                | "CountFound" >> beam.combiners.Count.PerElement()
                | "FoundList" >> beam.combiners.ToList()
                | "WriteFound"
                >> beam.Map(_write_found, total=beam.pvalue.AsSingleton(total), output=self.output)
            )
        return {"kept": out.kept, "removed": out.removed}
