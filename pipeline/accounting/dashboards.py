"""A finished job's funnel on the dashboards training uses: `--report-to tensorboard,wandb`
puts stats.json's counts (input, written, and each status and reason) as scalars in
OUTPUT/tensorboard/ and/or a wandb run (files in OUTPUT/wandb/; WANDB_MODE=offline works).

    report_funnel("out/", stats, ("tensorboard",))
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from apache_beam.io.filesystems import FileSystems

from pipeline.io.layout import TENSORBOARD_DIR, join_path
from pipeline.io.url_lists import InputError
from schemas import Stats, Status

TARGETS = ("tensorboard", "wandb")


def report_targets(spec: str | None) -> tuple[str, ...]:
    """ "tensorboard,wandb" -> ("tensorboard", "wandb"); None, "" or "none" -> ()."""
    names = tuple(n.strip() for n in (spec or "").split(",") if n.strip() not in ("", "none"))
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise InputError(f"--report-to {unknown[0]}: tensorboard, wandb or none")
    return names


def funnel_scalars(stats: Stats) -> dict[str, float]:
    """{"funnel/input": n, "funnel/written": n, "funnel/failed": n, "failed/http_404": n, ...}"""
    scalars = {"funnel/input": stats.input, "funnel/written": stats.written}
    scalars["funnel/shards"] = stats.shards
    for status in (Status.FAILED, Status.FILTERED, Status.DUPLICATE, Status.INVALID):
        reasons = getattr(stats, status)
        scalars[f"funnel/{status}"] = sum(reasons.values())
        scalars.update({f"{status}/{reason}": n for reason, n in reasons.items()})
    return scalars


def report_funnel(
    output: str, stats: Stats, report_to: tuple[str, ...], project: str = "webpairs"
) -> None:
    scalars = funnel_scalars(stats)
    if "tensorboard" in report_to:
        write_tensorboard_scalars(join_path(output, TENSORBOARD_DIR), scalars)
    if "wandb" in report_to:
        try:
            import wandb
        except ImportError:
            raise InputError(
                "--report-to wandb needs wandb: pip install 'webpairs[wandb]'"
            ) from None
        # wandb writes local files only, into DIR/wandb/ (OUTPUT/wandb/ = WANDB_DIR)
        folder = output if "://" not in output else tempfile.mkdtemp()
        os.makedirs(folder, exist_ok=True)
        run = wandb.init(project=project, name=os.path.basename(output.rstrip("/")), dir=folder)
        run.log(scalars, step=0)
        run.finish()


def write_tensorboard_scalars(folder: str, scalars: dict[str, float], step: int = 0) -> None:
    """One TensorBoard event file in `folder` (local, gs://, s3://) holding `scalars` at `step`."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    local = tempfile.mkdtemp()
    try:
        writer = EventFileWriter(local)
        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        writer.close()
        for name in os.listdir(local):
            with (
                open(os.path.join(local, name), "rb") as src,
                FileSystems.create(join_path(folder, name)) as dst,
            ):
                dst.write(src.read())
    finally:
        shutil.rmtree(local, ignore_errors=True)
