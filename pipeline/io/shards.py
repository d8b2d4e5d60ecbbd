"""Writing WebDataset shards: deterministic assignment, sorted members, atomic renames.

    written = ok_rows | "WriteShards" >> WriteShards(ShardConfig(output="out/"))
    written["rows"], written["shards"]

A sample's shard is a hash of its key modulo a shard count sized from the number of rows
the job set out to crawl (as img2dataset sizes its shards; or from the samples written and
their bytes, see WriteShards), so a re-run of the same input writes the same bytes into the
same shard names, shard sizes differ only by hash noise and the rows that failed or were
removed (no tiny tail shard), and no worker ever needs a global list. Each shard is written
to a temporary name and renamed, through Beam's FileSystems, so a reader never sees half a tar, on local disk, gs:// or s3://.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.io.layout import MANIFEST_NAME, SHARDS_DIR, SIZES_NAME, join_path
from pipeline.results import rows_to_table
from schemas import Manifest, ShardEntry, sample_to_members
from schemas.records import EMBEDDING_FIELD_NAMES

TAR_MTIME = 0  # fixed, so that re-runs write byte-identical tars


@dataclass(frozen=True)
class ShardConfig:
    output: str  # dataset folder; shards go to OUTPUT/shards/
    samples_per_shard: int = 10_000  # rows per shard (planned rows, or written ones: WriteShards)
    bytes_per_shard: int | None = None  # also cap shards by encoded image bytes
    extra_fields: tuple[pa.Field, ...] = ()  # pass-through columns for the per-shard parquet

    def __post_init__(self):
        if self.samples_per_shard < 1:
            raise ValueError("samples per shard must be positive")


def shard_count(n_samples: int, n_bytes: int, cfg: ShardConfig) -> int:
    """Number of shards: about samples_per_shard each (and under bytes_per_shard)."""
    by_count = round(n_samples / cfg.samples_per_shard)
    by_bytes = math.ceil(n_bytes / cfg.bytes_per_shard) if cfg.bytes_per_shard else 0
    return max(1, by_count, by_bytes)


def assign_shard(key: str, num_shards: int) -> int:
    # Keys are hex digests; their leading 64 bits are uniform.
    return int(key[:16], 16) % num_shards


def shard_name(index: int, num_shards: int) -> str:
    return str(index).zfill(max(5, len(str(num_shards - 1))))


def public_row(row: dict) -> dict:
    """The row without the bytes and scratch fields that travel with it."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


class _HashingWriter(io.RawIOBase):
    """Write-through wrapper counting bytes and computing sha256 as a tar streams out."""

    def __init__(self, raw):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        self.raw.write(b)
        return len(b)


def json_row(row: dict) -> dict:
    """What KEY.json holds: the public row without embeddings (they live in the parquet)."""
    return {k: v for k, v in public_row(row).items() if k not in EMBEDDING_FIELD_NAMES}


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uname = info.gname = ""
    return info


def member_header(name: str, size: int) -> bytes:
    """The header tarfile writes (PAX format) for a regular file member of ours: built here in
    one go for an ASCII name of up to 100 bytes (every key and extension we write), else by
    tarfile itself (a PAX extended header first). Byte-identical either way
    (tests/pipeline/test_shard_plan.py); with the hashing, 0.39x the CPU of tarfile's path
    (bench/tar_writer.py)."""
    if not name.isascii() or len(name) > tarfile.LENGTH_NAME or size >= 8**11:
        return _tar_info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    raw = name.encode("ascii")
    head = b"".join(
        (
            raw.ljust(100, b"\0"),
            b"%07o\0" % 0o644,  # mode
            b"%07o\0%07o\0" % (0, 0),  # user and group ids
            b"%011o\0" % size,
            b"%011o\0" % TAR_MTIME,
            b"        ",  # the checksum's place, counted as spaces
            tarfile.REGTYPE,
            b"\0" * 100,  # link name
            tarfile.POSIX_MAGIC,
        )
    ).ljust(tarfile.BLOCKSIZE, b"\0")  # empty user, group, device numbers and prefix
    checksum = 256 + sum(head[:148]) + sum(head[156:])
    return head[:148] + b"%06o\0" % checksum + head[155:]


def write_tar(samples: list[dict], fileobj) -> tuple[int, str]:
    """Stream the samples (already sorted) as a tar, the bytes tarfile's "w|" PAX-format writer
    would write; -> (bytes written, sha256)."""
    out = _HashingWriter(fileobj)
    for row in samples:
        for member in sample_to_members(
            row["key"], row["_image"], row["_ext"], row["caption"], json_row(row)
        ):
            size = len(member.data)
            out.write(member_header(member.name, size))
            out.write(member.data)
            out.write(bytes(-size % tarfile.BLOCKSIZE))
    out.write(bytes(2 * tarfile.BLOCKSIZE))  # the end of the archive
    out.write(bytes(-out.size % tarfile.RECORDSIZE))  # padded to a whole record
    return out.size, out.sha.hexdigest()


def write_atomically(path: str, write) -> object:
    """Write through FileSystems to a temporary sibling, then rename into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    with FileSystems.create(tmp) as f:
        result = write(f)
    FileSystems.rename([tmp], [path])
    return result


def apply_decisions(
    rows: Iterable[dict], decisions: Iterable[dict]
) -> tuple[list[dict], list[dict]]:
    """Rows of one shard and the curation decisions about them -> (kept rows sorted by key, removed rows)."""
    removed_by_key = {d["key"]: d for d in decisions}
    kept, removed = [], []
    for row in rows:
        d = removed_by_key.get(row["key"])
        if d is None:
            kept.append(row)
        else:
            out = public_row(row)
            out.update(
                status=d["status"],
                reason=d["reason"],
                duplicate_of=d["duplicate_of"],
                error=d["error"],
            )
            removed.append(out)
    kept.sort(key=lambda r: r["key"])
    return kept, removed


def write_shard(rows: list[dict], name: str, cfg: ShardConfig) -> ShardEntry:
    """Rows with `_image`, in their final order -> OUTPUT/shards/NAME.tar and NAME.parquet
    (each written atomically); sets every row's `shard` to NAME."""
    for row in rows:
        row["shard"] = name
    base = join_path(cfg.output, SHARDS_DIR, name)
    size, digest = write_atomically(base + ".tar", lambda f: write_tar(rows, f))
    table = rows_to_table([public_row(r) for r in rows], cfg.extra_fields)
    write_atomically(base + ".parquet", lambda f: pq.write_table(table, f))
    return ShardEntry(
        url=f"{SHARDS_DIR}/{name}.tar",
        nsamples=len(rows),
        filesize=size,
        sha256=digest,
        parquet=f"{SHARDS_DIR}/{name}.parquet",
    )


# the output type declared: Beam would infer it from the bytecode at every build
@beam.typehints.with_output_types(beam.typehints.Any)
class _WriteShardFn(beam.DoFn):
    """(shard index, its ok rows with `_image`) -> the shard written; its rows out (tagged
    "removed" where a curation decision, looked up by shard, removed them), its ShardEntry
    ("shards") and, with `show`, what the audit gallery shows of its sampled rows ("shown")."""

    def __init__(self, cfg: ShardConfig, show=None):
        self.cfg, self.show = cfg, show
        self.samples = Metrics.counter("write_shards", "samples")
        self.shards = Metrics.counter("write_shards", "shards")
        self.bytes = Metrics.counter("write_shards", "bytes")

    def process(self, element, num_shards, decisions, wanted=frozenset()):
        index, rows = element
        if self.show is not None and wanted:
            rows = list(rows)
            for row in rows:
                if row["key"] in wanted:
                    yield beam.pvalue.TaggedOutput("shown", self.show(row))
        rows, removed = apply_decisions(rows, decisions[index])
        for row in removed:
            yield beam.pvalue.TaggedOutput("removed", row)
        if not rows:
            return
        entry = write_shard(rows, shard_name(index, num_shards), self.cfg)
        self.samples.inc(len(rows))
        self.shards.inc()
        self.bytes.inc(entry.filesize)
        yield beam.pvalue.TaggedOutput("shards", entry)
        for row in rows:
            yield public_row(row)


def light_row(row: dict) -> dict:
    """What curation stages see of a sample: its result row and the size of its image, no bytes."""
    light = public_row(row)
    light["_nbytes"] = len(row["_image"])
    return light


class WriteShards(beam.PTransform):
    """{"rows": ok rows with `_image`, "survivors": their light rows kept by curation,
    "removed": curation decisions, and optionally "planned": how many rows the job set out to
    crawl (one int), "wanted": the keys the audit gallery shows (one set)} -> {"rows": written
    rows, "removed": removed rows, "shards": one ShardEntry per shard, "shown": (key, what the
    gallery shows of it) from `show` for each wanted row}.

    Image bytes are shuffled once, here, and alone: the rows go to their shard by a GroupByKey;
    the decisions (small) reach the shard writer as a side input looked up by shard.

    The shard count is sized, as img2dataset sizes its shards, from the rows the job set out to
    crawl ("planned"), so a row's shard is known before its image is downloaded: its bytes go
    from the crawl straight into the shuffle, in the same fused stage, and no stage reads them
    again but the writer. Without "planned", or with a byte cap (`bytes_per_shard`: bytes are
    known only after the crawl), the count is sized from the survivors instead, and the rows
    wait for it.
    """

    def __init__(self, cfg: ShardConfig, show=None):
        super().__init__()
        self.cfg, self.show = cfg, show

    def expand(self, pcolls):
        cfg = self.cfg
        if "planned" in pcolls and cfg.bytes_per_shard is None:
            counted = pcolls["planned"] | "ShardCount" >> beam.Map(lambda n: shard_count(n, 0, cfg))
        else:
            counted = (
                pcolls["survivors"]
                | "SampleSizes" >> beam.Map(lambda r: (1, r["_nbytes"]))
                | "SumSizes" >> beam.CombineGlobally(beam.combiners.TupleCombineFn(sum, sum))
                | "ShardCount" >> beam.Map(lambda t: shard_count(t[0], t[1], cfg))
            )
        num_shards = beam.pvalue.AsSingleton(counted, default_value=1)  # no rows planned: none
        decisions = beam.pvalue.AsMultiMap(
            pcolls["removed"]
            | "ShardOfDecision"
            >> beam.Map(lambda d, n: (assign_shard(d["key"], n), d), n=num_shards)
        )
        sides = {"num_shards": num_shards, "decisions": decisions}
        if self.show is not None and "wanted" in pcolls:
            sides["wanted"] = beam.pvalue.AsSingleton(pcolls["wanted"])
        written = (
            pcolls["rows"]
            | "ShardOfRow" >> beam.Map(lambda r, n: (assign_shard(r["key"], n), r), n=num_shards)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard"
            >> beam.ParDo(_WriteShardFn(cfg, self.show), **sides).with_outputs(
                "shards", "removed", "shown", main="rows"
            )
        )
        return {
            "rows": written.rows,
            "removed": written.removed,
            "shards": written.shards,
            "shown": written.shown,
        }


def shard_sizes(manifest: Manifest) -> dict[str, dict[str, int]]:
    """{folder of the shards: {tar file name: samples}}: the `sizes.json` OpenCLIP's webdataset
    loader reads beside the tars to count an epoch without --train-num-samples."""
    sizes: dict[str, dict[str, int]] = {}
    for entry in manifest.shardlist:
        folder, _, name = entry.url.rpartition("/")
        sizes.setdefault(folder, {})[name] = entry.nsamples
    return sizes


def save_manifest(manifest: Manifest, output: str) -> str:
    """OUTPUT/manifest.json, and sizes.json beside the tars, written atomically. -> its path."""
    for folder, sizes in shard_sizes(manifest).items():
        text = json.dumps(sizes, indent=0, sort_keys=True).encode("utf-8")
        write_atomically(join_path(output, folder, SIZES_NAME), lambda f, t=text: f.write(t))
    path = join_path(output, MANIFEST_NAME)
    write_atomically(path, lambda f: f.write(manifest.to_json().encode("utf-8")))
    return path


def write_manifest(
    entries: list[ShardEntry],
    output: str,
    options: dict,
    source: str | None = None,
    scorer: dict | None = None,
) -> str:
    manifest = Manifest(
        shardlist=sorted(entries, key=lambda e: e.url),
        options=options,
        source=source,
        scorer=scorer,
    )
    return save_manifest(manifest, output)


class WriteManifest(beam.PTransform):
    """ShardEntry per shard -> OUTPUT/manifest.json (one small file, written once)."""

    def __init__(
        self, output: str, options: dict, source: str | None = None, scorer: dict | None = None
    ):
        super().__init__()
        self.output, self.options, self.source, self.scorer = output, options, source, scorer

    def expand(self, entries):
        return (
            entries
            | "CollectEntries" >> beam.combiners.ToList()
            | "WriteManifestFile"
            >> beam.Map(
                write_manifest,
                output=self.output,
                options=self.options,
                source=self.source,
                scorer=self.scorer,
            )
        )
