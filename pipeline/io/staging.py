"""The crawl log that makes `--resume` cheap: every downloaded and decoded row (image bytes
included) is appended to OUTPUT/_staging/ as it is produced, in files written atomically. A
re-run with `--resume` reads the log back and downloads only the URLs it lacks; the final
shards equal an uninterrupted run's because shards are assigned from the full set of rows.

    rows = images | "StageRows" >> StageRows("out/")           # passes rows through, logs them
    staged = p | "ReadStaged" >> ReadStaged("out/", extra)    # what an earlier attempt logged
"""

from __future__ import annotations

import io
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.curation.decisions import DropRemoved
from pipeline.io.layout import STAGING_DIR, join_path
from pipeline.results import rows_to_table

_FLUSH_BYTES = 32 * 1024 * 1024


_PRIVATE = (pa.field("_image", pa.binary()), pa.field("_ext", pa.string()))


def staging_dir(output: str) -> str:
    return join_path(output, STAGING_DIR)


def write_staged(rows: list[dict], output: str, extra: tuple[pa.Field, ...]) -> str:
    table = rows_to_table(rows, extra)
    table = table.append_column(_PRIVATE[0], pa.array([r.get("_image") for r in rows], pa.binary()))
    table = table.append_column(_PRIVATE[1], pa.array([r.get("_ext") for r in rows], pa.string()))
    path = join_path(staging_dir(output), f"part-{uuid.uuid4().hex}.parquet")
    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        pq.write_table(table, f)
    FileSystems.rename([tmp], [path])  # a killed writer leaves only a .tmp, which is never read
    return path


# the output type declared: Beam would infer it from the bytecode at every build
@beam.typehints.with_output_types(beam.typehints.Any)
class _StageRowsFn(beam.DoFn):
    def __init__(self, output: str, extra: tuple[pa.Field, ...], flush_rows: int):
        self.output, self.extra, self.flush_rows = output, extra, flush_rows
        self.staged = Metrics.counter("staging", "rows")

    def start_bundle(self):
        self._buffer, self._bytes = [], 0

    def _flush(self):
        if self._buffer:
            write_staged(self._buffer, self.output, self.extra)
            self.staged.inc(len(self._buffer))
            self._buffer, self._bytes = [], 0

    def process(self, row):
        self._buffer.append(row)
        self._bytes += len(row.get("_image") or b"")
        if self._bytes >= _FLUSH_BYTES or len(self._buffer) >= self.flush_rows:
            self._flush()
        yield row

    def finish_bundle(self):
        self._flush()


class StageRows(beam.PTransform):
    """Decoded rows -> the same rows, logged to OUTPUT/_staging/ on the way."""

    def __init__(self, output: str, extra: tuple[pa.Field, ...] = (), flush_rows: int = 1000):
        super().__init__()
        self.output, self.extra, self.flush_rows = output, tuple(extra), flush_rows

    def expand(self, rows):
        return rows | "Log" >> beam.ParDo(_StageRowsFn(self.output, self.extra, self.flush_rows))


def read_staged_file(readable) -> list[dict]:
    with FileSystems.open(readable.metadata.path) as f:
        table = pq.read_table(io.BytesIO(f.read()))
    return [
        {k: v for k, v in row.items() if not (k == "_image" and v is None)}
        for row in table.to_pylist()
    ]


def _first_by_status(rows) -> dict:
    return min(rows, key=lambda r: (r["status"], r.get("sha256") or ""))


class ReadStaged(beam.PTransform):
    """OUTPUT/_staging/*.parquet -> rows, one per key (a retried bundle may have logged twice)."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, pbegin):
        pattern = join_path(staging_dir(self.output), "*.parquet")
        return (
            pbegin
            | "Match"
            >> fileio.MatchFiles(pattern, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "Open" >> fileio.ReadMatches()
            | "Read" >> beam.FlatMap(read_staged_file)
            | "ByKey" >> beam.Map(lambda r: (r["key"], r))
            | "OnePerKey" >> beam.CombinePerKey(_first_by_status)
            | "Rows" >> beam.Values()
        )


class SkipStaged(beam.PTransform):
    """{"pairs", "staged"} -> the pairs whose key the staging log does not hold (a join by key)."""

    def expand(self, pcolls):
        return {
            "light": pcolls["pairs"],
            "removed": pcolls["staged"],
        } | "DropStaged" >> DropRemoved()
