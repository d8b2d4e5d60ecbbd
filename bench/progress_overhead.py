"""What a row costs the progress side channel (pipeline/accounting/progress.py).

    PYTHONPATH=$PWD .venv/bin/python bench/progress_overhead.py --rows 1000000 --repeat 3

Two measurements, back to back, on the same rows:
1. `ReportProgress.process` called directly on every row (its counter, clock read and, once a
   second, its file write), against an identity function: CPU ns per row.
2. A DirectRunner (in_memory) pipeline of Create -> Map(identity) with and without a
   ReportProgress step beside it (as the jobs attach it): wall seconds and their difference.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import apache_beam as beam

from pipeline.accounting.progress import ReportProgress


def direct_calls(rows: list[dict], output: str) -> tuple[float, float]:
    """(ns per row with ReportProgress.process, ns per row with an identity generator)."""
    fn = ReportProgress(output, "processed")
    fn.setup()

    def identity(row):
        yield row

    timings = []
    for process in (fn.process, identity):
        start = time.process_time_ns()
        for row in rows:
            for _ in process(row):
                pass
        timings.append((time.process_time_ns() - start) / len(rows))
    fn.finish_bundle()
    return timings[0], timings[1]


def pipeline_seconds(rows: list[dict], output: str | None) -> float:
    start = time.monotonic()
    with beam.Pipeline(runner="DirectRunner") as p:
        mapped = p | beam.Create(rows, reshuffle=False) | "Identity" >> beam.Map(lambda r: r)
        if output is not None:
            _ = mapped | beam.ParDo(ReportProgress(output, "processed"))
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pipeline-rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = [{"key": f"{i:08d}", "status": "ok" if i % 10 else "failed"} for i in range(args.rows)]
    small = rows[: args.pipeline_rows]
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            with_ns, without_ns = direct_calls(rows, out)
            plain = pipeline_seconds(small, None)
            reported = pipeline_seconds(small, out)
        print(
            json.dumps(
                {
                    "round": r,
                    "rows": args.rows,
                    "process_ns_per_row": round(with_ns, 1),
                    "identity_ns_per_row": round(without_ns, 1),
                    "added_ns_per_row": round(with_ns - without_ns, 1),
                    "pipeline_rows": len(small),
                    "pipeline_s_without": round(plain, 2),
                    "pipeline_s_with": round(reported, 2),
                    "pipeline_added_us_per_row": round((reported - plain) / len(small) * 1e6, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
