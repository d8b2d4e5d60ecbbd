"""Checkpoints: model, optimizer, step, RNG states and data position, written atomically.

RUN/checkpoints/step-00001000.pt    one file from rank 0 (one process, DDP): written to a temp
                                    file in the same folder, fsynced, then renamed: a crash
                                    never leaves a partial checkpoint
RUN/checkpoints/step-00001000.dcp/  FSDP2: every rank writes its shards of the model and
                                    optimizer (torch.distributed.checkpoint) into a temp
                                    folder, rank 0 adds meta.pt (the rest), then renames

Either kind resumes on any world size and either strategy (DCP reshards on load), and
`load_checkpoint` reads either kind whole, for evaluation.

path = save_checkpoint("runs/x", step=1000, state={...}, keep=3)
path = resolve_checkpoint("latest", "runs/x")  # newest complete checkpoint
state = load_checkpoint(path)                  # {"model": {...}, "step": 1000, ...}
restore_training_state(model, optimizer, load_checkpoint(path, tensors=False))
model, tokenizer = load_model("runs/x", torch.device("cpu"))  # for evaluation and scoring
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from trainer.configs import UserError, model_config_from_dict
from trainer.distributed import barrier, is_distributed, is_sharded
from trainer.model import CLIP, model_from_config
from trainer.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})\.(pt|dcp)$")
META = "meta.pt"  # in a .dcp folder: everything but the model and optimizer tensors
CAPTIONS_FILE = "captions.txt"  # in a run folder: the first training captions, one a line


class CheckpointError(UserError):
    """A checkpoint that is missing or not one of ours."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def run_captions(spec: str) -> Path | None:
    """RUN/captions.txt of the run a checkpoint (RUN/checkpoints/step-N.pt) or run folder
    belongs to, if that run recorded its training captions."""
    path = resolve_checkpoint(spec)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else Path(spec)
    captions = run_dir / CAPTIONS_FILE
    return captions if captions.is_file() else None


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
    if p.is_dir() and _NAME.match(p.name):
        return p
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
    _prune(run_dir, keep)
    return final


def save_sharded_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    is_main: bool,
    keep: int = 3,
) -> Path:
    """Every rank calls this: DCP writes each rank's shards of the model and optimizer state;
    rank 0 adds `state` (the rest) as meta.pt, then renames the folder into place."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    tensors = {"model": model_state, "optimizer": optimizer_state}
    folder = checkpoint_dir(run_dir)
    final = folder / f"step-{step:08d}.dcp"
    tmp = folder / f".{final.name}.tmp"
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    dcp.save(tensors, checkpoint_id=tmp)
    if is_main:
        with open(tmp / META, "wb") as f:
            torch.save({"version": CHECKPOINT_VERSION, "step": step, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(folder)
        _prune(run_dir, keep)
    barrier()
    return final


def _prune(run_dir: str | os.PathLike, keep: int) -> None:
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, tensors: bool = True) -> dict:
    """The checkpoint's contents. For a .dcp folder, "sharded" is its path, and "model" (the
    full weights) is read only when `tensors`: training restores the shards it needs instead."""
    path = Path(path)
    sharded = path.is_dir()
    try:
        state = torch.load(path / META if sharded else path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a webpairs checkpoint (version {CHECKPOINT_VERSION})")
    if sharded:
        state["sharded"] = str(path)
        if tensors:
            state["model"] = _load_full_model(path)
    return state


def _load_full_model(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a DCP checkpoint as plain tensors, in this process alone."""
    metadata = dcp.FileSystemReader(path).read_metadata()
    model = {}
    for key, meta in metadata.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata):
            model[key.removeprefix("model.")] = torch.empty(meta.size, dtype=meta.properties.dtype)
    _dcp_load({"model": model}, path, alone=True)
    return model


def _dcp_load(tensors: dict, path: str | os.PathLike, alone: bool) -> None:
    """dcp.load in place, with the other ranks or (`alone`) in this process only."""
    with warnings.catch_warnings():  # DCP warns that one process loads alone: intended
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(tensors, checkpoint_id=path, no_dist=alone)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole, on the CPU of rank 0 (empty elsewhere); every rank calls this."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def restore_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Weights and optimizer state into `model` (plain, DDP or FSDP2) from either kind of
    checkpoint, whatever the world size that wrote it."""
    if "sharded" in saved:  # DCP reads the pieces this rank holds, whoever wrote them
        model_state, optimizer_state = get_state_dict(model, optimizer)
        tensors = {"model": model_state, "optimizer": optimizer_state}
        _dcp_load(tensors, saved["sharded"], alone=not is_distributed())
        set_state_dict(
            model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state
        )
    elif is_sharded(model):  # a full checkpoint into shards: each rank keeps its own
        full = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, saved["model"], options=full)
        by_name = optimizer_state_by_name(saved["optimizer"], optimizer, model)
        set_optimizer_state_dict(model, optimizer, by_name, options=full)
    else:
        getattr(model, "module", model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for p, state in optimizer.state.items():  # moments of a once 0-dim logit_scale
            for key, value in state.items():
                if key != "step" and value.shape != p.shape and value.numel() == p.numel():
                    state[key] = value.reshape(p.shape)


def optimizer_state_by_name(
    state: dict, optimizer: torch.optim.Optimizer, model: nn.Module
) -> dict:
    """torch's optimizer state dict (parameters numbered in param-group order) keyed by
    parameter name instead, as torch.distributed.checkpoint.state_dict expects it."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


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


def load_model(checkpoint: str, device: torch.device) -> tuple[CLIP, CaptionTokenizer]:
    """Model and tokenizer from a checkpoint file or a run folder (its latest checkpoint)."""
    state = load_checkpoint(resolve_checkpoint(checkpoint))
    cfg = model_config_from_dict(state["model_config"])
    model = model_from_config(cfg)
    model.load_state_dict(state["model"])
    tokenizer = CaptionTokenizer.from_json(state["tokenizer"], cfg.text.context_length)
    return model.to(device).eval(), tokenizer
