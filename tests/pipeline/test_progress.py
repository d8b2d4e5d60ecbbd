"""Progress while a job runs (worker files summed by the driver) and the funnel on TensorBoard."""

from __future__ import annotations

import collections
import json
import logging
import re
import time
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline.accounting.dashboards import funnel_scalars, report_funnel
from pipeline.accounting.progress import (
    ProgressMonitor,
    ReportProgress,
    Snapshot,
    progress_line,
    read_snapshot,
)
from pipeline.jobs.curate import main as curate
from schemas import Stats
from tests.conftest import serve

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "china"]


def test_worker_counts_are_summed_across_files(tmp_path):
    out = str(tmp_path)
    rows = [{"status": "ok"}] * 5 + [{"status": "failed"}] * 2 + [{}]  # no status: ok
    with TestPipeline() as p:
        for i, chunk in enumerate((rows[:3], rows[3:])):  # two steps, two files at least
            _ = (
                p
                | f"Rows{i}" >> beam.Create(chunk)
                | f"Report{i}" >> beam.ParDo(ReportProgress(out, "processed"))
            )
    assert len(list((tmp_path / "_progress").glob("processed-*.json"))) >= 2
    snap = read_snapshot(out)
    assert snap.counts["processed"] == {"ok": 6, "failed": 2} and snap.first is not None


def test_a_file_caught_mid_write_keeps_its_last_value(tmp_path):
    folder = tmp_path / "_progress"
    folder.mkdir()
    path = folder / "processed-a.json"
    path.write_text('{"stage": "processed", "counts": {"ok": 4}, "first": 1.0, "at": 2.0}')
    cache: dict = {}
    assert read_snapshot(str(tmp_path), cache).processed() == 4
    path.write_text('{"stage": "proc')  # being rewritten
    assert read_snapshot(str(tmp_path), cache).processed() == 4


def test_progress_line_has_rate_failures_and_eta():
    snap = Snapshot(first=100.0, at=110.0)
    snap.counts["total"].update({"ok": 1000, "invalid": 7})  # invalid rows are never processed
    snap.counts["processed"].update({"ok": 180, "failed": 20})
    line = progress_line("webpairs curate", snap, now=115.0)  # 200 rows in 10 s, 5 s ago
    assert line == (
        "webpairs curate: 200/1,000 rows processed (20.0%), 20.0 rows/s, 20 failed, ETA 35s"
    )
    snap.counts["total"].clear()  # size unknown: no share, no ETA
    assert progress_line("p", snap, now=115.0) == "p: 200 rows processed, 20.0 rows/s, 20 failed"


def test_monitor_logs_periodic_lines_when_not_a_terminal(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.accounting.progress")
    with (
        open(tmp_path / "stderr.txt", "w") as stream,  # a file: not a terminal
        ProgressMonitor(str(tmp_path / "out"), "job", every=0.05, stream=stream) as monitor,
    ):
        (tmp_path / "out" / "_progress").mkdir(parents=True)  # a worker's file
        (tmp_path / "out" / "_progress" / "processed-a.json").write_text(
            '{"stage": "processed", "counts": {"ok": 3}, "first": 1.0, "at": 2.0}'
        )
        time.sleep(0.3)
    lines = [m for m in caplog.messages if m.startswith("job: 3 rows processed")]
    assert len(lines) >= 2  # periodic
    assert caplog.messages[-1].startswith("job: 3 rows processed in ")  # the final tally
    assert monitor.final.processed() == 3 and not (tmp_path / "out" / "_progress").exists()
    assert (tmp_path / "stderr.txt").read_text() == ""  # lines are logged, not drawn


def counts_in(line: str) -> dict[str, int]:
    """ "... (failed 5, ok 15)" -> {"failed": 5, "ok": 15}"""
    inside = re.search(r"\(([^)]*)\)$", line).group(1)
    return {k: int(v.replace(",", "")) for k, v in (p.split() for p in inside.split(", "))}


def test_a_curation_run_shows_progress_and_its_final_counts_are_the_funnel(
    web_images, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="pipeline.accounting.progress")
    with serve(web_images) as site:
        site.delay = 0.15  # each image: the run lasts a few seconds
        rows = [{"url": site.url(f"/img/{n}.jpg"), "caption": n} for n in PHOTOS]
        rows += [{"url": site.url(f"/img/{n}.png"), "caption": n} for n in PHOTOS]
        rows += [{"url": site.url("/missing.jpg"), "caption": "gone"}]
        rows += [{"url": None, "caption": "no url"}]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        out = tmp_path / "out"
        argv = [
            *("--input", str(tmp_path / "urls.parquet"), "--output", str(out)),
            *("--image-size", "64", "--threads", "1", "--allow-networks", "127.0.0.1/32"),
            *("--progress-every", "0.2", "--report-to", "tensorboard"),
        ]
        assert curate(argv) == 0
    periodic = [m for m in caplog.messages if " rows processed" in m]
    assert len(periodic) >= 3, caplog.messages
    done = [int(re.search(r": ([\d,]+)(?:/[\d,]+)? rows", m).group(1)) for m in periodic]
    assert done == sorted(done)  # running counts only grow
    assert any(f"/{len(rows) - 1} rows processed" in m for m in periodic)  # less the invalid
    (final,) = [m for m in caplog.messages if " rows finished in " in m]
    stats = Stats.from_json((out / "stats.json").read_text())
    by_status = {"ok": stats.written}
    for status in ("failed", "filtered", "duplicate", "invalid"):
        if getattr(stats, status):
            by_status[status] = sum(getattr(stats, status).values())
    assert counts_in(final) == by_status and sum(by_status.values()) == len(rows)
    assert not (out / "_progress").exists()

    scalars = tensorboard_scalars(out / "tensorboard")
    assert scalars == {k: (0, float(v)) for k, v in funnel_scalars(stats).items()}
    assert scalars["funnel/input"] == (0, len(rows)) and scalars["failed/http_404"] == (0, 1)


def tensorboard_scalars(folder: Path) -> dict[str, tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    found = collections.defaultdict(list)
    for tag in events.Tags()["scalars"]:
        found[tag] = [(e.step, e.value) for e in events.Scalars(tag)]
    return {tag: values[-1] for tag, values in found.items() if len(values) == 1}


def test_on_a_terminal_the_line_is_rewritten_in_place(tmp_path):
    import os
    import pty

    leader, follower = pty.openpty()
    with (
        os.fdopen(follower, "w") as terminal,
        ProgressMonitor(str(tmp_path), "job", stream=terminal) as monitor,
    ):
        assert monitor.tty and monitor.every == 1.0  # a terminal's default
        (tmp_path / "_progress").mkdir()
        (tmp_path / "_progress" / "processed-a.json").write_text(
            '{"stage": "processed", "counts": {"ok": 5, "failed": 1}, "first": 1.0, "at": 3.0}'
        )
        time.sleep(1.3)
    shown = os.read(leader, 4096).decode()
    os.close(leader)
    assert "\r\x1b[2Kjob: 6 rows processed, 3.0 rows/s, 1 failed" in shown and shown.endswith("\n")


def test_the_funnel_goes_to_wandb_offline(tmp_path, monkeypatch):
    import pytest

    wandb = pytest.importorskip("wandb", reason="the wandb extra")
    from tests.trainer.test_monitor import wandb_file_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    stats = Stats(input=10, written=6, shards=2, failed={"http_404": 3}, invalid={"no_url": 1})
    report_funnel(str(tmp_path), stats, ("wandb",))
    wandb.teardown()  # the service process writes the run file: wait for it
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    logged = {}
    for data in wandb_file_records(run_file):
        record = wandb.proto.wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                logged[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    assert {k: logged[k] for k in funnel_scalars(stats)} == funnel_scalars(stats)
    assert logged["failed/http_404"] == 3 and logged["funnel/input"] == 10
