"""Training-step throughput and peak memory for a model preset: the real `train_step`
(normalize, forward, local-loss InfoNCE, backward, clip, AdamW) on synthetic batches.

Each model runs in a fresh process so that peak memory (max RSS on CPU, max allocated on
CUDA) belongs to that model alone.

    .venv/bin/python bench/train_step.py --models tiny base --batch-sizes 64 8 --vocab-size 259 49408
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from trainer.configs import TrainConfig, get_model_config
from trainer.distributed import World, pick_device
from trainer.model import CLIP
from trainer.session import Session, make_optimizer
from trainer.train import autocast_for, train_step


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(name: str, batch_size: int, steps: int, device: str, precision: str, vocab: int) -> dict:
    dev = pick_device(device)
    before = rss_mb()
    cfg = get_model_config(name, [f"text.vocab_size={vocab}"] if vocab else [])
    torch.manual_seed(0)
    model = CLIP(cfg).to(dev)
    train_cfg = TrainConfig(precision=precision)
    session = Session(model, model, make_optimizer(model, train_cfg), None, [], None)
    world = World(device=dev)
    size, t = cfg.vision.image_size, cfg.text
    batch = {
        "image": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8),
        "text": torch.randint(3, t.vocab_size, (batch_size, t.context_length)),
    }
    batch["text"][:, t.context_length // 2] = t.eot_token_id
    autocast = autocast_for(precision, dev)
    for _ in range(2):  # warm-up: allocator, kernels, optimizer state
        train_step(session, batch, 1e-4, train_cfg, world, autocast)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(session, batch, 1e-4, train_cfg, world, autocast)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else rss_mb() - before
    return {
        "model": name,
        "vocab": cfg.text.vocab_size,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "batch_size": batch_size,
        "step_ms": round(1000 * elapsed / steps, 1),
        "samples_per_s": round(batch_size * steps / elapsed, 1),
        "peak_memory_MB": round(peak, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "base"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 8])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    p.add_argument("--vocab-size", type=int, nargs="+", default=[259, 49408],
                   help="per model; 259 is the byte-level tokenizer, 49408 CLIP's BPE")  # fmt: skip
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.one:
        result = one(*args.models[:1], *args.batch_sizes[:1], args.steps, args.device,
                     args.precision, args.vocab_size[0])  # fmt: skip
        print(json.dumps(result), flush=True)
        return
    for name, batch_size, vocab in zip(args.models, args.batch_sizes, args.vocab_size, strict=True):
        cmd = [sys.executable, __file__, "--one", "--models", name, "--batch-sizes",
               str(batch_size), "--steps", str(args.steps), "--device", args.device,
               "--precision", args.precision, "--vocab-size", str(vocab)]  # fmt: skip
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
