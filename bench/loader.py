"""Loader throughput: samples/s of the training data stream, total and per worker.

Reads real shards (yours with --data, or digits from scikit-learn rendered as JPEGs of
--source-size pixels into a temp folder) through the exact training path: tar -> shuffle
buffer -> decode -> random resized crop -> tokenize -> batch -> DataLoader worker -> main.

    .venv/bin/python bench/loader.py --workers 0 1 2 --image-size 224 --source-size 384
    .venv/bin/python bench/loader.py --data 'out/shards/*.tar' --workers 4 8
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits

from trainer.configs import DataConfig
from trainer.data import build_loader, new_position
from trainer.position import Topology
from trainer.sources import resolve_sources
from trainer.tokenizer import CaptionTokenizer, byte_tokenizer

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digit_shards(folder: Path, samples: int, per_shard: int, size: int) -> str:
    digits = load_digits()
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(samples):
            j = i % len(digits.images)
            gray = Image.fromarray((digits.images[j] * 255 / 16).astype(np.uint8), mode="L")
            image = gray.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90)
            caption = f"a photo of the digit {NAMES[digits.target[j]]}"
            sink.write({"__key__": f"s{i:07d}", "jpg": buf.getvalue(), "txt": caption})
    return f"{folder}/*.tar"


def measure(spec: str, workers: int, image_size: int, batch_size: int, batches: int) -> dict:
    shards = resolve_sources([spec])
    cfg = DataConfig(
        batch_size=batch_size, workers=workers, image_size=image_size, context_length=77
    )
    tokenizer = CaptionTokenizer(byte_tokenizer(), 77)
    position = new_position(shards, cfg, Topology(1, max(1, workers)))
    it = iter(build_loader(shards, cfg, tokenizer, position, rank=0))
    warmup = max(2, workers * 2)
    for _ in range(warmup):  # worker start-up and the shuffle buffer fill are not throughput
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    rate = batches * batch_size / elapsed
    return {
        "workers": workers,
        "image_size": image_size,
        "batch_size": batch_size,
        "samples_per_s": round(rate, 1),
        "samples_per_s_per_worker": round(rate / max(1, workers), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="shards to read (default: digits JPEGs written to a temp dir)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--source-size", type=int, default=384, help="side of the generated JPEGs")
    p.add_argument("--samples", type=int, default=4000, help="generated samples")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=40)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.data or write_digit_shards(Path(tmp), args.samples, 500, args.source_size)
        for workers in args.workers:
            result = measure(spec, workers, args.image_size, args.batch_size, args.batches)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
