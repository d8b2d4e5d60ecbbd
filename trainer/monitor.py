"""What a run reports while it trains: metrics records, progress lines, stalls.

metrics = MetricsLog("runs/x", enabled=world.is_main)   # runs/x/metrics.jsonl (+ TensorBoard)
metrics.write({"step": 10, "loss": 2.3})
with StallWatchdog(timeout_s=600, rank=0) as dog:
    for batch in loader: dog.beat(step)
"""

from __future__ import annotations

import faulthandler
import json
import logging
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object a line to RUN/metrics.jsonl; mirrors scalars to TensorBoard
    when it is installed. Disabled (a no-op) on ranks other than 0."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tensorboard = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:  # a line survives any crash after it
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if self.tensorboard is not None and "step" in record:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name != "step":
                    self.tensorboard.add_scalar(name, value, record["step"])

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class StallWatchdog:
    """Logs (once per stall) when this rank has not finished a step for `timeout_s`, with the
    Python stacks of the process, so a rank whose loader stopped producing batches is named."""

    def __init__(self, timeout_s: float, rank: int):
        self.timeout_s = timeout_s
        self.rank = rank
        self.step = 0
        self.last = time.monotonic()
        self.stalls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)

    def __enter__(self) -> StallWatchdog:
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def beat(self, step: int) -> None:
        self.step = step
        self.last = time.monotonic()

    def _watch(self) -> None:
        reported_at = None
        while not self._stop.wait(min(self.timeout_s / 4, 30.0)):
            idle = time.monotonic() - self.last
            if idle < self.timeout_s:
                reported_at = None
            elif reported_at != self.last:
                reported_at = self.last
                self.stalls += 1
                log.error(
                    "rank %d stalled: no batch for %.0f s after step %d (data loader or a "
                    "collective is stuck); stacks follow",
                    self.rank,
                    idle,
                    self.step,
                )
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


class SeenKeys:
    """Debug log of every sample trained on: `step epoch key` lines in RUN/seen-keys.rankR.txt."""

    def __init__(self, run_dir: Path, rank: int):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / f"seen-keys.rank{rank}.txt"

    def write(self, step: int, batch: dict) -> None:
        lines = [f"{step} {s[0]} {k}\n" for k, s in zip(batch["key"], batch["sample"].tolist())]
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)


def truncate_seen_keys(run_dir: Path, step: int) -> None:
    """Drop lines a killed run wrote after the checkpoint we resume from (debug log only)."""
    for path in run_dir.glob("seen-keys.rank*.txt"):
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if int(line.split()[0]) <= step))
