import json
import logging
import time

import pytest
import torch

from trainer.cli import main
from trainer.monitor import MetricsLog, StallWatchdog


def test_watchdog_names_the_rank_that_stopped_producing_batches(caplog):
    with caplog.at_level(logging.ERROR), StallWatchdog(timeout_s=0.2, rank=3) as dog:
        dog.beat(7)
        time.sleep(0.15)
        dog.beat(8)  # still alive
        time.sleep(0.6)  # now stalled: reported once, not on every check
    assert dog.stalls == 1
    assert "rank 3 stalled: no batch for" in caplog.text and "after step 8" in caplog.text


def test_metrics_are_json_lines_and_only_rank_0_writes(tmp_path):
    MetricsLog(tmp_path / "a").write({"step": 1, "loss": 2.5})
    MetricsLog(tmp_path / "b", enabled=False).write({"step": 1, "loss": 2.5})
    (record,) = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and record["loss"] == 2.5 and "time" in record
    assert not (tmp_path / "b").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_training_on_gpu(digit_shards, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["--data", f"{digit_shards[0].parent}/*.tar", "--output", str(run_dir),
                 "--steps", "4", "--batch-size", "8", "--workers", "0", "--device", "cuda",
                 "--log-every", "1"]) == 0  # fmt: skip
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)


def scalars_of(event_dir) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard itself reads from the event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_training_writes_step_loss_and_eta_to_tensorboard_and_the_log(
    digit_shards, tmp_path, caplog
):
    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="trainer.train")
    argv = ["--data", f"{digit_shards[0].parent}/*.tar", "--output", str(run_dir), "--model",
            "smoke", "--steps", "4", "--batch-size", "8", "--workers", "0", "--log-every", "2",
            "--threads", "1", "--report-to", "tensorboard"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = scalars_of(run_dir / "tensorboard")
    assert logged["loss"] == [(r["step"], pytest.approx(r["loss"])) for r in records]
    assert [s for s, _ in logged["samples_per_s"]] == [2, 4]
    assert logged["eta_s"][-1] == (4, 0.0) and logged["eta_s"][0][1] > 0
    lines = [m for m in caplog.messages if m.startswith("step ")]
    assert lines[0].startswith("step 2/4 loss ") and " samples/s ETA " in lines[0]
    assert lines[-1].endswith("ETA 0s")


def test_report_to_none_writes_metrics_jsonl_only(tmp_path):
    with MetricsLog(tmp_path, report_to=()) as metrics:
        metrics.write({"step": 1, "loss": 2.0})
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.jsonl").exists()


def test_wandb_offline_run_files_hold_the_metrics(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the wandb extra")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLog(tmp_path, report_to=("wandb",), run_name="t", config={"lr": 0.1}) as m:
        m.write({"step": 1, "loss": 2.5, "lr": 0.1})
        m.write({"step": 2, "loss": 1.5, "lr": 0.1})
    wandb.teardown()  # the service process writes the run file: wait for it to finish
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history = []
    for data in wandb_file_records(run_file):
        record = wandb.proto.wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history_items = record.history.item  # wandb-core names them by nested_key
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in history_items
            }
            history.append((items["_step"], items["loss"]))
    assert history == [(1, 2.5), (2, 1.5)]
    assert (tmp_path / "wandb-id.txt").read_text() in run_file.name


def wandb_file_records(path) -> list[bytes]:
    """The records of a .wandb run file: a 7-byte header (":W&B", magic, version), then
    LevelDB's log format (32 KiB blocks; records of crc32c, length, type: full/first/middle/
    last). wandb no longer ships a Python reader; `wandb sync` reads these."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            records.append(pending)
            pending = b""
    return records
