"""Checkpoints: model, optimizer, step, RNG states and data position, written atomically.

RUN/checkpoints/step-00001000.pt   written to a temp file in the same folder, fsynced,
                                   then renamed: a crash never leaves a partial checkpoint

path = save_checkpoint("runs/x", step=1000, state={...}, keep=3)
path = resolve_checkpoint("latest", "runs/x")  # newest complete checkpoint
state = load_checkpoint(path)
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainer.configs import UserError

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointError(UserError):
    """A checkpoint that is missing or not one of ours."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        m = _NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(spec: str, run_dir: str | os.PathLike | None = None) -> Path:
    """ "latest" (in `run_dir`), a run folder (its latest), or a checkpoint file."""
    if spec == "latest":
        if run_dir is None:
            raise CheckpointError("--resume latest needs a run folder")
        path = latest_checkpoint(run_dir)
        if path is None:
            raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)} to resume from")
        return path
    p = Path(spec)
    if p.is_dir():
        path = latest_checkpoint(p)
        if path is None:
            raise CheckpointError(f"no checkpoint in {checkpoint_dir(p)}")
        return path
    if not p.is_file():
        raise CheckpointError(f"checkpoint {spec} does not exist")
    return p


def save_checkpoint(run_dir: str | os.PathLike, step: int, state: dict, keep: int = 3) -> Path:
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}.pt"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": CHECKPOINT_VERSION, "step": step, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a webpairs checkpoint (version {CHECKPOINT_VERSION})")
    return state


def capture_rng() -> dict:
    """This process's random states: torch (CPU and CUDA), numpy, python."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
