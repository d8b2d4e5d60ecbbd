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
