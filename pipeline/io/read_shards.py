"""Existing WebDataset datasets as input: this project's outputs, img2dataset's output folders
and plain OpenCLIP-style tars flow into the same decode, curation and sharding stages,
without re-downloading.

    rows = p | "ReadShards" >> ReadShards(ShardInput("laion-folder/"))
    rows["rows"], rows["invalid"], rows["input_count"], rows["warnings"]

`input` may be a folder (its `*.tar`, or `shards/*.tar` of a webpairs output), a
`manifest.json`, a brace pattern (`data/{00000..00099}.tar`) or a glob. A sample's key is
derived from its source shard and key, so it is stable for the life of the dataset.

A sample whose `KEY.json` is not a JSON object keeps its image and caption (what training needs)
and loses its url and extra columns; each is counted as a `bad_json` warning in stats.json.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
import braceexpand
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.crawl.images import sniff_mime
from pipeline.io.layout import SHARDS_DIR, join_path
from pipeline.io.url_lists import InputError
from pipeline.results import result_row
from schemas import (
    Manifest,
    Reason,
    Status,
    group_samples,
    image_extension,
    key_for_url,
    tar_members,
)


@dataclass(frozen=True)
class ShardInput:
    input: str
    extra_cols: tuple[str, ...] = ()  # fields of each sample's json copied into its result row


def list_tars(spec: str) -> list[str]:
    """The tar files an input spec names (driver side: a listing, nothing is read but a manifest)."""
    if spec.endswith(".json"):
        if not FileSystems.exists(spec):
            raise InputError(f"--input {spec!r} does not exist")
        with FileSystems.open(spec) as f:
            manifest = Manifest.from_json(f.read().decode("utf-8"))
        base = spec.rsplit("/", 1)[0] if "/" in spec else "."
        return [join_path(base, s.url) for s in manifest.shardlist]
    patterns = list(braceexpand.braceexpand(spec)) if "{" in spec else [spec]
    if len(patterns) == 1 and not patterns[0].endswith(".tar") and "*" not in patterns[0]:
        folder = patterns[0].rstrip("/")
        patterns = [join_path(folder, "*.tar"), join_path(folder, SHARDS_DIR, "*.tar")]
    files = []
    for pattern in patterns:
        files += [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    files = sorted(set(files))
    if not files:
        raise InputError(f"--input {spec!r} matches no .tar file")
    return files


def shard_members(path: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of a shard on any Beam filesystem (`schemas.tar_members`). An uncompressed
    shard must end on a zero block: one cut off or damaged at a member header raises
    tarfile.ReadError instead of ending early and quietly."""
    with FileSystems.open(path) as f:
        end = yield from tar_members(f)
    if end is not None:
        with FileSystems.open(path) as f:
            f.seek(end)
            if f.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
                raise tarfile.ReadError(
                    f"no end-of-archive marker at byte {end}: cut off or damaged"
                )


def _as_text(value) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, sort_keys=True)


def sample_meta(sample: dict) -> tuple[dict, str | None]:
    """A sample's `KEY.json` -> (its object, None); ({}, Reason.BAD_JSON) when it is not a JSON
    object; ({}, None) when the sample has none."""
    if "json" not in sample:
        return {}, None
    try:
        meta = json.loads(sample["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}, Reason.BAD_JSON
    return (meta, None) if isinstance(meta, dict) else ({}, Reason.BAD_JSON)


def sample_to_row(sample: dict, shard: str, extra_cols: tuple[str, ...]) -> tuple[dict, str | None]:
    """A source sample -> (an ok result row with its image in `_data`, or a failed/invalid row;
    a warning's reason when a problem did not decide the row's outcome, else None)."""
    shard_name = shard.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    source_key = f"{shard_name}/{sample['__key__'].rsplit('/', 1)[-1]}"
    meta, warning = sample_meta(sample)
    caption = (
        sample["txt"].decode("utf-8", errors="replace") if "txt" in sample else meta.get("caption")
    )
    pair = {
        "url": meta.get("url") if isinstance(meta.get("url"), str) else None,
        "caption": caption if isinstance(caption, str) else None,
        "key": key_for_url(f"wds:{source_key}"),
        "extra": {c: _as_text(meta.get(c)) for c in extra_cols},
    }
    image_ext = image_extension(sample)
    if image_ext is None:
        row = result_row(
            pair,
            Status.INVALID,
            reason=Reason.MISSING_IMAGE,
            error=f"sample {source_key} has no image member",
        )
        return row, warning
    data = sample[image_ext]
    mime = sniff_mime(data)
    row = result_row(
        pair, Status.OK, bytes=len(data), mime=mime, sha256=hashlib.sha256(data).hexdigest()
    )
    if mime is None:
        row.update(
            status=Status.FAILED,
            reason=Reason.NOT_IMAGE,
            error=f"{source_key}.{image_ext} is not an image",
        )
        return row, warning
    row["_data"] = data
    return row, warning


class _ReadTarFn(beam.DoFn):
    def __init__(self, cfg: ShardInput):
        self.cfg = cfg
        self.samples = Metrics.counter("read_shards", "samples")
        self.corrupt = Metrics.counter("read_shards", "corrupt_shards")
        self.bad_json = Metrics.counter("read_shards", Reason.BAD_JSON)

    def process(self, path):
        try:
            for sample in group_samples(shard_members(path)):
                self.samples.inc()
                row, warning = sample_to_row(sample, path, self.cfg.extra_cols)
                if warning == Reason.BAD_JSON:
                    self.bad_json.inc()
                if warning:
                    yield beam.pvalue.TaggedOutput("warnings", warning)
                yield row
        except (tarfile.TarError, OSError, EOFError) as e:
            # What was read before the damage is kept; the rest of the shard is one counted row.
            self.corrupt.inc()
            bare = {
                "url": None,
                "caption": None,
                "key": key_for_url(f"wds-corrupt:{path}"),
                "extra": {},
            }
            yield result_row(
                bare,
                Status.INVALID,
                reason=Reason.CORRUPT_SHARD,
                error=f"{path}: {type(e).__name__}: {e}",
            )


class ReadShards(beam.PTransform):
    """Tars -> {"rows": ok rows with `_data` (and failed ones), "invalid", "input_count",
    "warnings": one reason per problem that did not decide a row's outcome}."""

    def __init__(self, cfg: ShardInput):
        super().__init__()
        self.cfg = cfg
        self.files = list_tars(cfg.input)

    def expand(self, pbegin):
        read = (
            pbegin
            | "TarFiles" >> beam.Create(self.files)
            | "Spread" >> beam.Reshuffle()
            | "ReadTar" >> beam.ParDo(_ReadTarFn(self.cfg)).with_outputs("warnings", main="rows")
        )
        rows, warnings = read.rows, read.warnings
        count = rows | "CountInput" >> beam.combiners.Count.Globally().without_defaults()
        ok_or_failed = rows | "Readable" >> beam.Filter(lambda r: r["status"] != Status.INVALID)
        invalid = rows | "Unreadable" >> beam.Filter(lambda r: r["status"] == Status.INVALID)
        return {
            "rows": ok_or_failed,
            "invalid": invalid,
            "input_count": count,
            "warnings": warnings,
        }
