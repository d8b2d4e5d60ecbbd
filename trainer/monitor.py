"""What a run reports while it trains: metrics records, progress lines, stalls.

metrics = MetricsLog("runs/x", enabled=world.is_main)   # runs/x/metrics.jsonl, runs/x/tensorboard/
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
import uuid
from pathlib import Path

from trainer.configs import UserError

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object a line to RUN/metrics.jsonl and mirrors the numbers of records
    with a "step" to the dashboards of `report_to`: "tensorboard" (RUN/tensorboard/, event
    files) and "wandb" (run files under RUN/wandb/; WANDB_MODE=offline keeps them local).
    Disabled (a no-op) on ranks other than 0."""

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        report_to: tuple[str, ...] = ("tensorboard",),
        wandb_project: str = "webpairs",
        run_name: str | None = None,
        config: dict | None = None,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tensorboard = self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "--report-to tensorboard needs the tensorboard package "
                    "(pip install tensorboard), or --report-to none"
                ) from None
            self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if "wandb" in report_to:
            self.wandb = start_wandb(Path(run_dir), wandb_project, run_name, config)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:  # a line survives any crash after it
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if "step" not in record:
            return
        scalars = {
            k: v
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        }
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, record["step"])
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, step=record["step"])

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def report_targets(spec: str) -> tuple[str, ...]:
    """--report-to "tensorboard,wandb" -> ("tensorboard", "wandb"); "" or "none" -> ()."""
    names = tuple(n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in ("tensorboard", "wandb")]
    if unknown:
        raise UserError(f"--report-to {unknown[0]}: tensorboard, wandb or none")
    return names


def start_wandb(run_dir: Path, project: str, name: str | None, config: dict | None):
    """A wandb run logging under RUN/wandb/; a resumed run continues the same wandb run (its id
    is kept in RUN/wandb-id.txt)."""
    try:
        import wandb
    except ImportError:
        raise UserError("--report-to wandb needs wandb: pip install 'webpairs[wandb]'") from None
    id_file = run_dir / "wandb-id.txt"
    if not id_file.exists():
        id_file.write_text(uuid.uuid4().hex[:12])
    return wandb.init(
        project=project,
        name=name or run_dir.name,
        id=id_file.read_text().strip(),
        resume="allow",
        dir=str(run_dir),
        config=config,
    )


class RemainingTime:
    """The time left until `total` steps at the mean pace since `start` (this process's first
    step: a resumed run's earlier steps took time this process did not see)."""

    def __init__(self, start: int, total: int):
        self.start, self.total, self.started = start, total, time.monotonic()

    def seconds(self, step: int) -> float:
        done = step - self.start
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self.started) / done * (self.total - step)


def format_duration(seconds: float) -> str:
    """3725 -> "1h02m05s"; 65 -> "1m05s"; NaN -> "?"."""
    if seconds != seconds:
        return "?"
    s = round(seconds)
    h, m = s // 3600, s % 3600 // 60
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


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
