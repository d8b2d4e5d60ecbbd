"""Reading URL lists: parquet, csv, tsv, jsonl and txt, local or on any Beam filesystem.

    pairs = p | "ReadPairs" >> ReadPairs(ReadConfig(input="urls/*.parquet"))
    pairs["pairs"], pairs["invalid"], pairs["input_count"]

Parquet, jsonl and txt are read with Beam's splittable sources (a large file is split
across workers and streamed, never loaded whole); csv/tsv are streamed file by file with
the csv module so that quoted newlines survive.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.crawl.urls import InvalidUrl, normalize_url
from pipeline.results import result_row
from schemas import Reason, Status, key_for_url
from schemas.records import RESULT_FIELD_NAMES

logger = logging.getLogger(__name__)


FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt", "webdataset")


_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".deflate", ".lzma", ".xz")


MALFORMED = "__malformed__"  # key of a raw row the reader could not parse


class InputError(ValueError):
    """A problem with the user's input that deserves one clear line."""


@dataclass(frozen=True)
class ReadConfig:
    input: str  # path, glob or comma-separated list of them; any Beam filesystem
    input_format: str | None = None  # None: from the file extension
    url_col: str = "url"
    caption_col: str | None = "caption"  # None or "": no caption column
    extra_cols: tuple[str, ...] = ()  # --save-additional-columns, passed through to results
    max_url_length: int = 2048
    extra_fields: tuple[pa.Field, ...] = field(default=(), compare=False)  # filled by resolve()
    retry_failed: bool = False  # input is a previous run's rejects: keep only transient failures

    @property
    def patterns(self) -> list[str]:
        return [p.strip() for p in self.input.split(",") if p.strip()]


def detect_format(path: str) -> str:
    name = path.lower()
    if name.endswith((".tar", "manifest.json")):
        return "webdataset"
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for fmt, exts in {
        "parquet": (".parquet", ".pq"),
        "csv": (".csv",),
        "tsv": (".tsv", ".tab"),
        "jsonl": (".jsonl", ".json", ".ndjson"),
        "txt": (".txt",),
    }.items():
        if name.endswith(exts):
            return fmt
    raise InputError(f"cannot tell the format of {path!r} from its extension; pass --input-format")


def read_list_file(path: str | None, flag: str) -> tuple[str, ...]:
    """Non-empty lines of a small list file ('#' starts a comment line), casefolded, from any
    Beam filesystem; read once on the driver. Blocklists, opt-out domain lists."""
    if not path:
        return ()
    if not FileSystems.exists(path):
        raise InputError(f"{flag} file {path!r} does not exist")
    with FileSystems.open(path) as f:
        lines = f.read().decode("utf-8").splitlines()
    return tuple(
        t.strip().casefold() for t in lines if t.strip() and not t.lstrip().startswith("#")
    )


def _matched_files(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        results = FileSystems.match([pattern])[0].metadata_list
        if not results:
            raise InputError(f"--input {pattern!r} matches no file")
        files.extend(sorted(m.path for m in results))
    return files


def _columns_of(path: str, fmt: str) -> list[pa.Field]:
    """Columns of one input file, read from its header only."""
    if fmt == "txt":
        return [pa.field("url", pa.string())]
    if fmt == "parquet":
        with FileSystems.open(path) as f:
            return list(pq.ParquetFile(f).schema_arrow)
    with open_text(path) as text:
        if fmt in ("csv", "tsv"):
            header = next(csv.reader(text, delimiter="," if fmt == "csv" else "\t"), [])
            return [pa.field(name, pa.string()) for name in header]
        first = text.readline()
        try:
            names = list(json.loads(first)) if first.strip() else []
        except (json.JSONDecodeError, TypeError):
            raise InputError(f"first line of {path} is not a JSON object") from None
        return [pa.field(name, pa.string()) for name in names]


def resolve(cfg: ReadConfig) -> ReadConfig:
    """Check the input exists and has the named columns; fill the format and extra fields.

    Runs on the driver and reads only the header of the first file.
    """
    files = _matched_files(cfg.patterns)
    fmt = cfg.input_format or detect_format(files[0])
    if fmt not in FORMATS:
        raise InputError(f"--input-format {fmt!r} is not one of {', '.join(FORMATS)}")
    fields = _columns_of(files[0], fmt)
    names = [f.name for f in fields]
    listed = ", ".join(names) or "(none)"
    if fmt != "txt":
        wanted = [("--url-col", cfg.url_col)]
        if cfg.caption_col:
            wanted.append(("--caption-col", cfg.caption_col))
        wanted += [("--save-additional-columns", c) for c in cfg.extra_cols]
        for flag, name in wanted:
            if name not in names:
                raise InputError(f"{flag} {name!r} not in input columns: {listed}")
    clash = set(cfg.extra_cols) & set(RESULT_FIELD_NAMES)
    if clash:
        raise InputError(
            f"--save-additional-columns {', '.join(sorted(clash))} would overwrite result fields; rename them"
        )
    by_name = {f.name: f for f in fields}
    extra_fields = tuple(_passthrough_field(by_name[c]) for c in cfg.extra_cols if c in by_name)
    return dataclasses.replace(
        cfg, input_format=fmt, caption_col=cfg.caption_col or None, extra_fields=extra_fields
    )


def _passthrough_field(f: pa.Field) -> pa.Field:
    # Keep simple scalar types; anything nested travels as its JSON/str form.
    t = f.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return pa.field(f.name, t)
    return pa.field(f.name, pa.string())


def validate_pair(raw: dict, cfg: ReadConfig) -> tuple[dict | None, dict | None]:
    """-> (pair, None) for a usable row, or (None, invalid result row)."""
    extra = {c: _plain(raw.get(c)) for c in cfg.extra_cols}
    url = raw.get(cfg.url_col) if cfg.input_format != "txt" else raw.get("url")
    caption = raw.get(cfg.caption_col) if cfg.caption_col else None
    shown_url = url if isinstance(url, str) else (None if url is None else str(url))
    shown_caption = caption if isinstance(caption, str) else None
    bare = {"url": shown_url, "caption": shown_caption, "extra": extra}
    if MALFORMED in raw:
        return None, result_row(
            bare, Status.INVALID, reason=Reason.MALFORMED_ROW, error=raw[MALFORMED]
        )
    if url is not None and not isinstance(url, str):
        return None, result_row(
            bare,
            Status.INVALID,
            reason=Reason.UNPARSABLE_URL,
            error=f"URL is a {type(url).__name__}",
        )
    if caption is not None and not isinstance(caption, str):
        return None, result_row(
            bare,
            Status.INVALID,
            reason=Reason.CAPTION_NOT_STRING,
            error=f"caption is a {type(caption).__name__}",
        )
    try:
        nurl = normalize_url(url, cfg.max_url_length)
    except InvalidUrl as e:
        return None, result_row(bare, Status.INVALID, reason=e.reason, error=str(e))
    return {
        "url": url,
        "caption": caption,
        "nurl": nurl,
        "key": key_for_url(nurl),
        "extra": extra,
    }, None


def _plain(value):
    """Pass-through values as JSON-friendly scalars."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return json.dumps(value, default=str, sort_keys=True)


def parse_json_line(line: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return {MALFORMED: f"invalid JSON: {e.msg} at column {e.colno}"}
    if not isinstance(value, dict):
        return {MALFORMED: f"JSON line is a {type(value).__name__}, not an object"}
    return value


def iter_csv_rows(text: io.TextIOBase, delimiter: str):
    """Rows of a csv/tsv stream as dicts; a malformed line becomes {MALFORMED: detail}."""
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield {MALFORMED: f"csv line {reader.line_num}: {e}"}
            continue
        if not values:
            continue  # a blank line is not a row (csv module convention)
        if len(values) != len(header):
            row = dict(zip(header, values))
            row[MALFORMED] = (
                f"csv line {reader.line_num}: {len(values)} fields, header has {len(header)}"
            )
            yield row
            continue
        yield dict(zip(header, values))


class _ByteStream(io.RawIOBase):
    """Adapts a Beam FileSystems stream (maybe decompressing, without `readable()`) for io.TextIOWrapper."""

    def __init__(self, f):
        self.f = f

    def readable(self):
        return True

    def readinto(self, buf):
        data = self.f.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self):
        self.f.close()
        super().close()


def open_text(path: str) -> io.TextIOWrapper:
    """A text stream over any Beam filesystem path, decompressed by its extension."""
    raw = io.BufferedReader(_ByteStream(FileSystems.open(path)))
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


class _ReadCsvFileFn(beam.DoFn):
    def __init__(self, delimiter: str):
        self.delimiter = delimiter

    def process(self, readable_file):
        with open_text(readable_file.metadata.path) as text:
            yield from iter_csv_rows(text, self.delimiter)


class _ValidatePairFn(beam.DoFn):
    def __init__(self, cfg: ReadConfig):
        self.cfg = cfg
        self.valid = Metrics.counter("read", "valid")
        self.invalid = Metrics.counter("read", "invalid")

    def process(self, raw: dict):
        pair, invalid = validate_pair(raw, self.cfg)
        if pair is not None:
            self.valid.inc()
            yield pair
        else:
            self.invalid.inc()
            yield beam.pvalue.TaggedOutput("invalid", invalid)


class ReadRawRows(beam.PTransform):
    """Input files -> raw row dicts (column name -> value), one per input row."""

    def __init__(self, cfg: ReadConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pbegin):
        cfg = self.cfg
        sources = []
        for i, pattern in enumerate(cfg.patterns):
            fmt = cfg.input_format
            if fmt == "parquet":
                columns = (
                    [cfg.url_col]
                    + ([cfg.caption_col] if cfg.caption_col else [])
                    + list(cfg.extra_cols)
                    + (["status", "reason"] if cfg.retry_failed else [])
                )
                rows = pbegin | f"ReadParquet{i}" >> beam.io.ReadFromParquet(
                    pattern, columns=list(dict.fromkeys(columns))
                )
            elif fmt in ("csv", "tsv"):
                rows = (
                    pbegin
                    | f"MatchCsv{i}" >> fileio.MatchFiles(pattern)
                    | f"OpenCsv{i}" >> fileio.ReadMatches()
                    | f"ParseCsv{i}" >> beam.ParDo(_ReadCsvFileFn("," if fmt == "csv" else "\t"))
                )
            elif fmt == "jsonl":
                rows = (
                    pbegin
                    | f"ReadJsonl{i}" >> beam.io.ReadFromText(pattern)
                    | f"ParseJsonl{i}" >> beam.Map(parse_json_line)
                )
            else:  # txt: one URL per line
                rows = (
                    pbegin
                    | f"ReadTxt{i}" >> beam.io.ReadFromText(pattern)
                    | f"ParseTxt{i}" >> beam.Map(lambda line: {"url": line.strip() or None})
                )
            sources.append(rows)
        rows = (
            sources[0] if len(sources) == 1 else tuple(sources) | "FlattenInputs" >> beam.Flatten()
        )
        if cfg.retry_failed:
            rows = rows | "OnlyTransientFailures" >> beam.Filter(
                lambda r: r.get("status") == Status.FAILED and Reason.is_transient(r.get("reason"))
            )
        return rows


class ReadPairs(beam.PTransform):
    """-> {"pairs": valid pairs, "invalid": invalid result rows, "input_count": the count of
    input rows (no element for none: read it as a side input with default 0)}."""

    def __init__(self, cfg: ReadConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pbegin):
        raw = pbegin | "ReadRawRows" >> ReadRawRows(self.cfg)
        input_count = raw | "CountInput" >> beam.combiners.Count.Globally().without_defaults()
        checked = raw | "ValidatePairs" >> beam.ParDo(_ValidatePairFn(self.cfg)).with_outputs(
            "invalid", main="pairs"
        )
        return {"pairs": checked.pairs, "invalid": checked.invalid, "input_count": input_count}
