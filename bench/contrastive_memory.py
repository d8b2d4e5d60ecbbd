"""Peak memory and time of the contrastive loss (dense vs tiled), and of a training step with and
without contrastive accumulation as the batch grows. Every measurement runs in a fresh process;
peak memory is the growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs
after a small warm-up) over its RSS just before the measured call.

    OMP_NUM_THREADS=1 .venv/bin/python bench/contrastive_memory.py loss --batch-sizes 1024 4096 16384 65536
    OMP_NUM_THREADS=1 .venv/bin/python bench/contrastive_memory.py step --batch-sizes 64 256 1024 4096 16384 65536
    .venv/bin/python bench/contrastive_memory.py plot   # bench/out/contrastive-*.jsonl -> bench/contrastive_memory.png

Results are appended, one JSON line each, to bench/out/contrastive-loss.jsonl and
bench/out/contrastive-step.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DENSE_LIMIT_GIB = 20.0  # skip a dense loss whose logits alone would not fit in this


def dense_logits_gib(batch: int) -> float:
    return 2 * batch * batch * 4 / 2**30  # the two (B, B) fp32 logit matrices of a dense loss


def status_mib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def reset_peak() -> float:
    """Reset VmHWM to the current RSS; return that RSS (MiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_mib("VmRSS")


def measure(fn, repeats: int) -> tuple[float, float]:
    """(peak MiB of the first call, best time in s over `repeats` calls)."""
    base = reset_peak()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if i == 0:
            peak = status_mib("VmHWM") - base
    return peak, min(times)


def one_loss(impl: str, batch: int, dim: int, tile: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from trainer.loss import clip_loss

    def inputs(b):
        g = torch.Generator().manual_seed(0)
        img = F.normalize(torch.randn(b, dim, generator=g), dim=-1).requires_grad_()
        txt = F.normalize(torch.randn(b, dim, generator=g), dim=-1).requires_grad_()
        return img, txt, torch.tensor([14.0], requires_grad=True)

    def step(img, txt, scale):
        clip_loss(img, txt, scale, impl=impl, tile=tile).backward()
        img.grad = txt.grad = scale.grad = None

    step(*inputs(256))  # warm-up: kernels, thread pool
    leaves = inputs(batch)
    peak, seconds = measure(lambda: step(*leaves), repeats)
    return {"impl": impl, "batch": batch, "dim": dim, "tile": tile, "threads": torch.get_num_threads(),
            "peak_MiB": round(peak, 1), "seconds": round(seconds, 3)}  # fmt: skip


def one_step(batch: int, micro: int, impl: str, repeats: int, mode: str) -> dict:
    import torch

    from trainer.configs import LossConfig, TrainConfig, get_model_config
    from trainer.distributed import World
    from trainer.model import CLIP
    from trainer.session import Session, make_optimizer
    from trainer.train import autocast_for, train_step

    accum = batch // micro
    cfg = get_model_config("tiny", ["text.vocab_size=259"])
    torch.manual_seed(0)
    model = CLIP(cfg)
    t = TrainConfig(accum_steps=accum, precision="fp32")
    s = Session(model, model, make_optimizer(model, t), None, [], None, loss=LossConfig(impl=impl))

    def batch_of(b):
        texts = torch.randint(3, 259, (b, 32))
        texts[:, 16] = 2
        return {"image": torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8), "text": texts}

    def step(b):
        train_step(s, b, 1e-4, t, World(), autocast_for("fp32", torch.device("cpu")))

    step(batch_of(accum))  # warm-up at one sample per micro-batch: optimizer state, kernels
    data = batch_of(batch)
    peak, seconds = measure(lambda: step(data), repeats)
    return {"mode": mode, "batch": batch, "micro_batch": micro, "accum_steps": accum, "loss_impl": impl,
            "threads": torch.get_num_threads(), "peak_MiB": round(peak, 1),
            "seconds": round(seconds, 3)}  # fmt: skip


def run_child(args: list[str], out: Path) -> None:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"{' '.join(args)}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
        return
    line = result.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    with out.open("a") as f:
        f.write(line + "\n")


def read_series(path: Path, key) -> dict[str, list[tuple[int, float]]]:
    """{series name: [(batch, peak MiB), ...]} from a results file; the last run of a point wins."""
    points: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        points.setdefault(key(r), {})[r["batch"]] = r["peak_MiB"]
    return {name: sorted(p.items()) for name, p in points.items()}


def step_series(r: dict) -> str:
    if r["mode"] == "whole":
        return f"whole batch at once, {r['loss_impl']} loss"
    return f"--accum-steps B/{r['micro_batch']}, {r['loss_impl']} loss"


def plot_results(loss_path: Path, step_path: Path, output: Path) -> None:
    """Two log-log panels of peak memory against batch size, drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    panels = [
        ("contrastive loss, forward + backward (D = 512); dense not run where its two B x B "
         "logit matrices exceed 20 GiB", read_series(loss_path, _loss_name)),
        ("training step, tiny model (0.24 M parameters, 32 px, 32 tokens)",
         read_series(step_path, step_series)),
    ]  # fmt: skip
    width, height = 760, 560
    image = Image.new("RGB", (width * len(panels), height), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=14)
    for i, (title, series) in enumerate(panels):
        box = (i * width + 90, 60, (i + 1) * width - 20, height - 60)
        draw_panel(draw, font, box, title, series)
    image.save(output)


def _loss_name(r: dict) -> str:
    return f"{r['impl']} loss"


COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"]


def draw_panel(draw, font, box, title: str, series: dict[str, list[tuple[int, float]]]) -> None:
    left, top, right, bottom = box
    xs = [b for pts in series.values() for b, _ in pts] or [1, 2]
    ys = [m for pts in series.values() for _, m in pts if m > 0] or [1, 10]
    x0, x1 = math.log2(min(xs)), max(math.log2(max(xs)), math.log2(min(xs)) + 1)
    y0 = math.floor(math.log10(min(ys)))
    y1 = max(math.ceil(math.log10(max(ys))), y0 + 1)

    def at(b: float, m: float) -> tuple[float, float]:
        x = left + (math.log2(b) - x0) / (x1 - x0) * (right - left)
        y = bottom - (math.log10(m) - y0) / (y1 - y0) * (bottom - top)
        return x, y

    draw.text((left, 20), title, fill="black", font=font)
    for e in range(y0, y1 + 1):
        y = at(min(xs), 10**e)[1]
        draw.line([(left, y), (right, y)], fill="#dddddd")
        draw.text((left - 85, y - 8), f"{10**e:,} MiB", fill="black", font=font)
    for b in sorted(set(xs)):
        x = at(b, 10**y0)[0]
        draw.line([(x, top), (x, bottom)], fill="#eeeeee")
        draw.text(
            (x - 10, bottom + 8), f"{b // 1024}k" if b >= 1024 else str(b), fill="black", font=font
        )
    draw.text(((left + right) / 2 - 60, bottom + 30), "batch size B (log)", fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    for k, (name, pts) in enumerate(sorted(series.items())):
        color = COLORS[k % len(COLORS)]
        xy = [at(b, m) for b, m in pts if m > 0]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=3)
        for x, y in xy:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        y = top + 16 + 20 * k
        draw.line([(left + 12, y), (left + 40, y)], fill=color, width=3)
        draw.text((left + 48, y - 8), name, fill="black", font=font)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    loss = sub.add_parser("loss", help="clip_loss forward + backward, dense vs tiled")
    loss.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    loss.add_argument("--impls", nargs="+", default=["dense", "tiled"])
    loss.add_argument("--dim", type=int, default=512)
    loss.add_argument("--tile", type=int, default=1024)
    loss.add_argument("--repeats", type=int, default=2)
    step = sub.add_parser("step", help="train_step of the tiny model, micro-batch fixed")
    step.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384, 65536]
    )
    step.add_argument("--micro-batch", type=int, default=64)
    step.add_argument("--configs", nargs="+", default=["whole:dense", "accum:dense", "accum:tiled"],
                      help="whole|accum : dense|tiled")  # fmt: skip
    step.add_argument("--repeats", type=int, default=2)
    plot = sub.add_parser("plot", help="memory vs batch size, as a PNG")
    plot.add_argument("--output", type=Path, default=HERE / "contrastive_memory.png")
    for q in (loss, step):
        q.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # in the child process
    args = p.parse_args()

    if args.what == "plot":
        plot_results(OUT / "contrastive-loss.jsonl", OUT / "contrastive-step.jsonl", args.output)
        return
    if args.one:
        sys.path.insert(0, str(HERE.parent))
        if args.what == "loss":
            impl, batch = args.one[0], int(args.one[1])
            result = one_loss(impl, batch, args.dim, args.tile, args.repeats)
        else:
            batch, micro, impl, mode = int(args.one[0]), int(args.one[1]), *args.one[2:]
            result = one_step(batch, micro, impl, args.repeats, mode)
        print(json.dumps(result), flush=True)
        return

    OUT.mkdir(exist_ok=True)
    if args.what == "loss":
        for batch in args.batch_sizes:
            for impl in args.impls:
                if impl == "dense" and dense_logits_gib(batch) > DENSE_LIMIT_GIB:
                    gib = dense_logits_gib(batch)
                    print(f"dense B={batch}: skipped, its logits alone need {gib:.0f} GiB")
                    continue
                repeats = 1 if batch > 16384 else args.repeats
                common = [
                    "--dim",
                    str(args.dim),
                    "--tile",
                    str(args.tile),
                    "--repeats",
                    str(repeats),
                ]
                run_child(
                    ["loss", *common, "--one", impl, str(batch)], OUT / "contrastive-loss.jsonl"
                )
        return
    for batch in args.batch_sizes:
        for config in args.configs:
            mode, impl = config.split(":")
            if impl == "dense" and dense_logits_gib(batch) > DENSE_LIMIT_GIB:
                print(f"{config} B={batch}: skipped, its logits alone need "
                      f"{dense_logits_gib(batch):.0f} GiB")  # fmt: skip
                continue
            micro = args.micro_batch if mode == "accum" else batch
            one = ["--one", str(batch), str(micro), impl, mode]
            repeats = 1 if batch > 16384 else args.repeats
            run_child(["step", "--repeats", str(repeats), *one], OUT / "contrastive-step.jsonl")


if __name__ == "__main__":
    main()
