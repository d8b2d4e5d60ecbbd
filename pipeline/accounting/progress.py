"""Progress of a running job, on every runner: rows done, rows/s, failures so far and an ETA.

Beam's metrics cannot serve: the DirectRunner hands back its result (and so its counters) only
when the pipeline has finished. So each `ReportProgress` step (a pass-through DoFn) keeps its
running counts per status and writes them, at most every `every` seconds and at the end of
each bundle, to a small JSON file of its own in OUTPUT/_progress/; the driver's
`ProgressMonitor` thread sums the files it finds every few seconds. Files, because OUTPUT is
the one place every worker of every runner here (in-memory, multi-processing, dask) writes to
and the driver reads from. A row costs a counter increment and a clock read
(bench/progress_overhead.py).

    rows | "ReportFetched" >> beam.ParDo(ReportProgress(output, "processed"))
    with ProgressMonitor(output, "webpairs curate", every=30):   # in the driver
        p.run().wait_until_finish()

The stages a job reports: "total" (the input's rows as they are read, for the ETA), "processed" (rows
through the job's expensive step: downloaded and decoded, or read and scored) and "done"
(final outcomes by status, which add up to stats.json's funnel at the end).
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.io.layout import PROGRESS_DIR, join_path

logger = logging.getLogger(__name__)

STAGES = ("total", "processed", "done")


# the output type declared: Beam would infer it from the bytecode at every build
@beam.typehints.with_output_types(beam.typehints.Any)
class ReportProgress(beam.DoFn):
    """Counts the rows passing by status (rows without one count as "ok") into this
    instance's file OUTPUT/_progress/STAGE-ID.json; yields each row unchanged."""

    def __init__(self, output: str, stage: str, every: float = 1.0):
        if stage not in STAGES:
            raise ValueError(f"unknown progress stage {stage!r}")
        self.output, self.stage, self.every = output, stage, every

    def setup(self):
        name = f"{self.stage}-{uuid.uuid4().hex}.json"
        self._path = join_path(self.output, PROGRESS_DIR, name)
        self._counts: collections.Counter = collections.Counter()
        self._first = None
        self._written_at = 0.0
        self._dirty = False

    def process(self, row):
        self._counts[row.get("status") or "ok"] += 1
        self._dirty = True
        now = time.monotonic()
        if self._first is None:
            self._first = time.time()
        if now - self._written_at >= self.every:
            self._write(now)
        yield row

    def finish_bundle(self):
        if self._dirty:
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        record = {
            "stage": self.stage,
            "counts": dict(self._counts),
            "first": self._first,  # wall time of this worker's first row ...
            "at": time.time(),  # ... and of these counts
        }
        with FileSystems.create(self._path) as f:
            f.write(json.dumps(record).encode())
        self._written_at, self._dirty = now, False


@dataclass
class Snapshot:
    """The sum of every worker's file at one moment."""

    counts: dict[str, collections.Counter] = field(
        default_factory=lambda: {s: collections.Counter() for s in STAGES}
    )
    first: float | None = None  # wall time the first row was processed, on any worker
    at: float | None = None  # wall time of the newest processed count

    @property
    def total(self) -> int | None:
        """The input rows a job will process (read so far; invalid rows are never processed)."""
        total = self.counts["total"]
        return sum(total.values()) - total["invalid"] or None

    def processed(self) -> int:
        return sum(self.counts["processed"].values())

    def done(self) -> int:
        return sum(self.counts["done"].values())


def read_snapshot(output: str, cache: dict | None = None) -> Snapshot:
    """Sums OUTPUT/_progress/*.json. A file caught mid-write keeps its last good value from
    `cache` (path -> record), which this updates."""
    cache = {} if cache is None else cache
    pattern = join_path(output, PROGRESS_DIR, "*.json")
    try:
        paths = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    except Exception:  # nothing written yet (some filesystems raise on no match)
        paths = []
    for path in paths:
        try:
            with FileSystems.open(path) as f:
                cache[path] = json.loads(f.read().decode())
        except (OSError, ValueError):
            continue  # being written: the previous value stands
    snap = Snapshot()
    for record in cache.values():
        snap.counts[record["stage"]].update(record["counts"])
        if record["stage"] == "processed" and record.get("first") is not None:
            snap.first = min(record["first"], snap.first or record["first"])
            snap.at = max(record["at"], snap.at or record["at"])
    return snap


def format_duration(seconds: float) -> str:
    """3725 -> "1h02m05s"; 65 -> "1m05s"."""
    s = round(seconds)
    h, m = s // 3600, s % 3600 // 60
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def progress_line(prog: str, snap: Snapshot, now: float) -> str:
    """ "webpairs curate: 1,234/10,000 rows processed (12.3%), 45.2 rows/s, 134 failed, ETA
    3m12s" (the ETA and share once the input's size is known)."""
    processed, total = snap.processed(), snap.total
    failed = snap.counts["processed"]["failed"]
    # the pace between the first row and the newest count (counts arrive every second or so;
    # none until a second's worth)
    span = snap.at - snap.first if snap.first else 0.0
    rate = processed / span if span >= 1.0 else None
    head = f"{processed:,}/{total:,}" if total else f"{processed:,}"
    parts = [f"{head} rows processed" + (f" ({100 * processed / total:.1f}%)" if total else "")]
    if rate is not None:
        parts.append(f"{rate:.1f} rows/s")
    parts.append(f"{failed:,} failed")
    if total and rate and processed < total:
        left = (total - processed) / rate - (now - snap.at)
        parts.append(f"ETA {format_duration(max(left, 0.0))}")
    if snap.done():
        done = snap.counts["done"]
        parts.append(f"{snap.done():,} finished ({done['ok']:,} written)")
    return f"{prog}: " + ", ".join(parts)


def final_line(prog: str, snap: Snapshot, seconds: float) -> str:
    """ "webpairs curate: 20 rows finished in 3s (failed 5, ok 15)"; a job without final
    outcomes (score) gives its processed rows."""
    stage = "done" if snap.done() else "processed"
    counts = snap.counts[stage]
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
    verb = "finished" if stage == "done" else "processed"
    took = format_duration(seconds)
    tally = f" ({outcomes})" if outcomes else ""
    return f"{prog}: {sum(counts.values()):,} rows {verb} in {took}{tally}"


class ProgressMonitor:
    """In the driver, while the pipeline runs: every `every` seconds, the progress line; on a
    terminal it rewrites one line of `stream`, otherwise it logs. On exit: the final tally
    (`self.final`, a Snapshot), one last line, and OUTPUT/_progress/ removed. `every` 0: off."""

    def __init__(
        self,
        output: str,
        prog: str,
        every: float | None = None,
        total: int | None = None,  # the input's size when the driver knows it (a manifest)
        stream=None,
    ):
        self.output, self.prog, self.total = output, prog, total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = (1.0 if self.tty else 30.0) if every is None else every
        self.final: Snapshot | None = None
        self._cache: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="progress", daemon=True)

    def __enter__(self) -> ProgressMonitor:
        self._clear()
        self._started = time.time()
        if self.every > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.final = self.snapshot()
        if self.every > 0:
            if self.tty:
                self.stream.write("\n")
            if exc[0] is None:
                logger.info(final_line(self.prog, self.final, time.time() - self._started))
        self._clear()

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            line = progress_line(self.prog, self.snapshot(), time.time())
            if self.tty:
                self.stream.write("\r\x1b[2K" + line)
                self.stream.flush()
            else:
                logger.info(line)

    def snapshot(self) -> Snapshot:
        snap = read_snapshot(self.output, self._cache)
        if self.total and not snap.total:
            snap.counts["total"]["ok"] = self.total
        return snap

    def _clear(self) -> None:
        folder = join_path(self.output, PROGRESS_DIR)
        try:
            if FileSystems.exists(folder):
                FileSystems.delete([folder])
        except OSError as e:
            logger.warning("could not remove %s: %s", folder, e)
