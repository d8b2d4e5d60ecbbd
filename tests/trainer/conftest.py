"""Trainer fixtures: real images (scikit-learn's bundled 8x8 digits, rendered with Pillow) in
real WebDataset shards written by `webdataset.ShardWriter`, with captions such as
"a photo of the digit seven".

Helpers tests call are fixtures returning the function (`make_shards`, `make_manifest`,
`keys_in`, `trainer_cli`), so no test imports this file."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits

from schemas import Manifest, ShardEntry

REPO = Path(__file__).resolve().parents[2]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_image(pixels: np.ndarray, size: int = 32) -> Image.Image:
    """An 8x8 digit (values 0..16) as a white-on-black RGB image of `size` pixels."""
    gray = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
    return gray.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def digit_samples(n: int, fmt: str = "png", size: int = 32, offset: int = 0) -> list[dict]:
    """`n` webdataset samples of digits: KEY.<fmt> image, KEY.txt caption, KEY.json row."""
    digits = load_digits()
    samples = []
    for i in range(offset, offset + n):
        label = int(digits.target[i])
        key = f"digit{i:05d}"
        samples.append(
            {
                "__key__": key,
                fmt: encode(digit_image(digits.images[i], size), fmt),
                "txt": f"a photo of the digit {NAMES[label]}",
                "json": {"key": key, "label": label, "status": "ok"},
            }
        )
    return samples


def write_shards(folder: Path, samples: list[dict], per_shard: int) -> list[Path]:
    """Shards `folder/00000.tar`, ... of `per_shard` samples each (ShardWriter)."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    return sorted(folder.glob("*.tar"))


def write_manifest(folder: Path, shards: list[Path], counts: list[int]) -> Path:
    entries = [
        ShardEntry(
            url=str(path.relative_to(folder)),
            nsamples=n,
            filesize=path.stat().st_size,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path, n in zip(shards, counts)
    ]
    path = folder / "manifest.json"
    path.write_text(Manifest(shardlist=entries, name="digits").to_json())
    return path


def shard_keys(shards: list[Path]) -> list[str]:
    """Every sample key in `shards` (read with tarfile, independently of the trainer)."""
    import tarfile

    keys = []
    for path in shards:
        with tarfile.open(path) as tar:
            keys.extend(sorted({m.name.split(".", 1)[0] for m in tar.getmembers()}))
    return keys


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tests share two cores with loader workers and subprocesses; oversubscribed OpenMP
    threads spin, and a tiny model then trains ~10x slower. Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_shards():
    """make_shards(folder, n, per_shard, fmt="png", offset=0) -> shard paths."""

    def make(folder: Path, n: int, per_shard: int, fmt: str = "png", offset: int = 0):
        return write_shards(folder, digit_samples(n, fmt=fmt, offset=offset), per_shard)

    return make


@pytest.fixture(scope="session")
def make_manifest():
    return write_manifest


@pytest.fixture(scope="session")
def keys_in():
    return shard_keys


@pytest.fixture(scope="session")
def trainer_cli():
    return run_trainer


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory) -> list[Path]:
    """4 shards x 16 PNG digits (64 samples), 32 px."""
    folder = tmp_path_factory.mktemp("digits") / "shards"
    return write_shards(folder, digit_samples(64), per_shard=16)


@pytest.fixture(scope="session")
def digit_manifest(digit_shards) -> Path:
    return write_manifest(digit_shards[0].parent.parent, digit_shards, [16] * len(digit_shards))


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory) -> list[Path]:
    """8 shards x 150 JPEG digits (1200 samples) for training runs, 32 px."""
    folder = tmp_path_factory.mktemp("train") / "shards"
    return write_shards(folder, digit_samples(1200, fmt="jpg"), per_shard=150)


def run_trainer(args: list[str], timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` in a fresh process, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )
