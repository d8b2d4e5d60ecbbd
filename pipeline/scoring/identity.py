"""Which checkpoint scored a dataset: its resolved path and sha256 (`ScorerIdentity`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.io.url_lists import InputError


@dataclass(frozen=True)
class ScorerIdentity:
    """Which model scored a dataset; recorded as the manifest's `scorer`."""

    checkpoint: str  # the checkpoint file (or .dcp folder) the workers load
    sha256: str  # of its bytes (for a .dcp folder: of every file, by relative name)
    model: str  # the trainer's model preset name; family open_clip: the architecture / config
    embed_dim: int
    image_size: int  # the model's input side: images are center-cropped and resized to it
    context_length: int
    # "webpairs": `checkpoint` is one of ours; "open_clip": OpenCLIP / OpenAI weights that
    # `model` (an OpenCLIP architecture name or config .json) is built for
    family: str = "webpairs"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def is_remote(path: str) -> bool:
    return "://" in path


def checkpoint_sha256(path: str) -> str:
    """sha256 of a checkpoint file (any Beam filesystem), or of a local .dcp folder's files."""
    sha = hashlib.sha256()
    if not is_remote(path) and os.path.isdir(path):
        for root, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                full = os.path.join(root, name)
                sha.update(os.path.relpath(full, path).encode() + b"\0")
                sha.update(checkpoint_sha256(full).encode())
        return sha.hexdigest()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


@contextlib.contextmanager
def local_checkpoint(path: str) -> Iterator[str]:
    """A local path to the checkpoint: itself, or a temporary copy of a gs:// / s3:// file
    (the trainer reads local files), removed afterwards."""
    if not is_remote(path):
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="webpairs-ckpt-")
    try:
        local = os.path.join(tmp, posixpath.basename(path.rstrip("/")) or "checkpoint.pt")
        with (
            FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as src,
            open(local, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_checkpoint_path(spec: str, weights_only: bool = False) -> str:
    """A run folder -> its latest checkpoint; local paths made absolute (workers read them).
    `weights_only`: a weights file (OpenCLIP / OpenAI), no run folder."""
    if weights_only and not is_remote(spec):
        if not os.path.isfile(spec):
            raise InputError(f"score weights {spec} is not a file")
        return os.path.abspath(spec)
    if is_remote(spec):
        if not FileSystems.exists(spec):
            raise InputError(f"score checkpoint {spec} does not exist")
        return spec
    from trainer.checkpoint import resolve_checkpoint  # lazily: imports torch

    try:
        return str(resolve_checkpoint(spec).resolve())
    except Exception as e:  # the trainer's CheckpointError: missing file, empty run folder
        raise InputError(f"score checkpoint: {e}") from None


def identify_checkpoint(spec: str, model: str | None = None) -> ScorerIdentity:
    """Driver side, before any work starts: resolve, hash and load the checkpoint once, so a
    missing or incompatible one is one clear line instead of a failure on every worker.
    `model`: an OpenCLIP architecture (or config .json) whose weights `spec` holds."""
    path = resolve_checkpoint_path(spec, weights_only=model is not None)
    from pipeline.scoring.handler import load_scoring_model  # lazily: imports the trainer

    family = "webpairs" if model is None else "open_clip"
    try:
        with local_checkpoint(path) as local:
            loaded, _ = load_scoring_model(local, "cpu", model)
            sha256 = checkpoint_sha256(local)
    except Exception as e:  # not a checkpoint, not ours, or weights that do not fit the config
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = "webpairs CLIP checkpoint" if model is None else f"set of {model} weights"
        raise InputError(f"score checkpoint {spec} is not a usable {what}: {detail}") from None
    cfg = loaded.cfg
    return ScorerIdentity(
        checkpoint=path,
        sha256=sha256,
        model=cfg.name if model is None else model,
        embed_dim=cfg.embed_dim,
        image_size=cfg.vision.image_size,
        context_length=cfg.text.context_length,
        family=family,
    )
