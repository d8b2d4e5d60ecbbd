"""Runs that build on a previous output: `--incremental PREV` skips URLs whose samples PREV
already holds; `--retry-failed PREV` re-attempts only PREV's transient failures. Either way the
new output holds only new samples, and its manifest names PREV as its source, so PREV and the
new output together never hold a sample twice.

    fresh = {"pairs": pairs} | "ExcludePrevious" >> ExcludePrevious("runs/2026-11-01")
"""

from __future__ import annotations

import io

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.io.layout import MANIFEST_NAME, REJECTS_DIR, SHARDS_DIR, join_path
from pipeline.io.url_lists import InputError
from pipeline.results import result_row
from schemas import Reason, Status
from schemas.records import RESULT_FIELD_NAMES


def check_previous(prev: str, flag: str) -> None:
    if not FileSystems.exists(join_path(prev, MANIFEST_NAME)):
        raise InputError(f"{flag} {prev!r} is not a finished webpairs output (no {MANIFEST_NAME})")


def rejects_input(prev: str) -> tuple[str, tuple[str, ...]]:
    """(pattern of PREV's rejects, the pass-through columns they carry)."""
    pattern = join_path(prev, REJECTS_DIR, "*.parquet")
    files = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if not files:
        raise InputError(f"--retry-failed {prev!r} has no rejects to retry")
    with FileSystems.open(files[0]) as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return pattern, tuple(n for n in names if n not in RESULT_FIELD_NAMES)


def _keys_of(readable) -> list[str]:
    with FileSystems.open(readable.metadata.path) as f:
        return pq.read_table(io.BytesIO(f.read()), columns=["key"]).column("key").to_pylist()


class _ExcludeFn(beam.DoFn):
    def __init__(self):
        self.skipped = Metrics.counter("incremental", "already_present")

    def process(self, element):
        key, groups = element
        present = bool(list(groups["previous"]))
        for pair in groups["pairs"]:
            if present:
                self.skipped.inc()
                yield beam.pvalue.TaggedOutput(
                    "duplicates",
                    result_row(pair, Status.DUPLICATE, reason=Reason.IN_PREVIOUS, duplicate_of=key),
                )
            else:
                yield pair


class ExcludePrevious(beam.PTransform):
    """Pairs -> {"pairs": those PREV lacks, "duplicates": result rows of those it holds}."""

    def __init__(self, previous: str):
        super().__init__()
        self.previous = previous

    def expand(self, pairs):
        pattern = join_path(self.previous, SHARDS_DIR, "*.parquet")
        previous_keys = (
            pairs.pipeline
            | "MatchPrevious"
            >> fileio.MatchFiles(pattern, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "OpenPrevious" >> fileio.ReadMatches()
            | "PreviousKeys" >> beam.FlatMap(_keys_of)
            | "KeyPrevious" >> beam.Map(lambda k: (k, 1))
        )
        out = (
            {
                "pairs": pairs | "KeyPairs" >> beam.Map(lambda p: (p["key"], p)),
                "previous": previous_keys,
            }
            | "Join" >> beam.CoGroupByKey()
            | "Exclude" >> beam.ParDo(_ExcludeFn()).with_outputs("duplicates", main="pairs")
        )
        return {"pairs": out.pairs, "duplicates": out.duplicates}
