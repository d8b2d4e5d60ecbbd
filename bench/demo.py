"""The demo's settings and figures: steps chosen on validation digits, the spread that the demo
test's margin rests on, and the full `make demo` run.

    .venv/bin/python bench/demo.py --nice 10 select --digits 1797 --steps 200 400 800 1600 --seeds 0 1
    .venv/bin/python bench/demo.py --nice 10 spread --digits 600 --steps 300 --seeds 0 1 2 3 4
    .venv/bin/python bench/demo.py full                # `webpairs demo --output bench/out/demo/full`
    .venv/bin/python bench/demo.py --nice 10 tiny-digits --seeds 0 1 2 3 4
    .venv/bin/python bench/demo.py report

select: `webpairs demo --validation` for each seed — the web made of three quarters of the
training digits, zero-shot top-1 on the other quarter — curated once per seed, then trained for
each --steps and --lrs value (a run each: the cosine schedule depends on the total). The held-out
evaluation digits are never rendered nor read (`pipeline.demo.demo_digits`). The choice: of the
settings whose mean validation top-1 is within one standard error of the best mean, the fewest
steps (the quickest demo).

spread: `webpairs demo` as tests/pipeline/test_demo.py runs it (held-out digits), over seeds:
zero-shot top-1 minus the logistic regression on the same split. Its worst case sets the test's
margin; no setting is chosen from these runs.

full: `webpairs demo --output DIR` with its defaults, as `make demo` runs it: wall time, figures.

tiny-digits: the trainer test that learns digits (tests/trainer/test_train.py), over seeds: its
top-1 on 597 held-out digits sets that test's threshold.

Every run is appended to bench/out/demo/results.jsonl; `report` prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out" / "demo"
RESULTS = OUT / "results.jsonl"


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.platform()}, Python {platform.python_version()}"
    )


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "pipeline/demo/app.py"],
        cwd=REPO,
        capture_output=True,
    )
    return head.stdout.decode().strip() + ("+dirty" if dirty.stdout.strip() else "")


def record(row: dict) -> None:
    row = {**row, "commit": commit(), "machine": machine(), "load": os.getloadavg()[0]}
    OUT.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def select(args) -> None:
    from pipeline.demo.app import (
        DemoConfig,
        curate,
        demo_digits,
        pixel_baseline,
        train_and_evaluate,
    )
    from pipeline.demo.web import build_web

    for seed in args.seeds:
        cfg = DemoConfig(
            output=OUT / f"select-{args.digits}-seed{seed}",
            digits=args.digits,
            seed=seed,
            validation=True,
        )
        cfg.output.mkdir(parents=True, exist_ok=True)
        rows, folder, _ = build_web(cfg, *demo_digits(cfg))
        if curate(cfg, rows, folder, "bench/demo.py") != 0:
            raise SystemExit("curation failed")
        baseline = pixel_baseline(cfg)
        for steps, lr in ((steps, lr) for steps in args.steps for lr in args.lrs):
            run = replace(cfg, steps=steps, lr=lr)
            start = time.monotonic()
            zeroshot = train_and_evaluate(run, folder)
            lines = (cfg.output / "run" / "metrics.jsonl").read_text().splitlines()
            curve = [
                [r["step"], r["eval/top-1"]] for r in map(json.loads, lines) if "eval/top-1" in r
            ]
            record(
                {
                    "kind": "select",
                    "digits": args.digits,
                    "seed": seed,
                    "steps": steps,
                    "lr": lr,
                    "eval_every": json.loads((cfg.output / "run/config.json").read_text())["eval"][
                        "every"
                    ],
                    "val_zeroshot_top1": zeroshot["results"]["top-1"],
                    "val_logreg_top1": baseline,
                    "val_images": zeroshot["results"]["zeroshot_images"],
                    "val_curve": curve,
                    "train_seconds": round(time.monotonic() - start, 1),
                }
            )


def webpairs_demo(output: Path, *extra: str) -> tuple[dict, str, float]:
    """`webpairs demo --output OUTPUT EXTRA...` as a user runs it -> (demo.json, stdout, wall s)."""
    cmd = [str(Path(sys.executable).parent / "webpairs"), "demo", "--output", str(output), *extra]
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads((output / "demo.json").read_text()), out, time.monotonic() - start


def spread(args) -> None:
    for steps in args.steps:
        for seed in args.seeds:
            figures, _, wall = webpairs_demo(
                OUT / f"spread-{args.digits}-{steps}-seed{seed}",
                "--digits", str(args.digits), "--steps", str(steps), "--seed", str(seed),
            )  # fmt: skip
            record({"kind": "spread", **figures, "wall_seconds": round(wall, 1)})


def full(args) -> None:
    figures, printed, wall = webpairs_demo(args.output)
    record(
        {
            "kind": "full",
            "command": f"webpairs demo --output {args.output}",
            **figures,
            "wall_seconds": round(wall, 1),
            "printed": printed,
        }
    )


def tiny_digits(args) -> None:
    """tests/trainer/test_train.py::test_tiny_model_learns_digits_in_a_few_hundred_cpu_steps,
    over seeds: the same shards (the test's own writers) and arguments, one torch thread."""
    import shutil

    import torch

    sys.path.insert(0, str(REPO / "tests" / "trainer"))
    import conftest  # the trainer tests' shard writers: the very images the test uses

    from trainer.train import main as train

    torch.set_num_threads(1)
    folder = OUT / "tiny-digits"
    shutil.rmtree(folder, ignore_errors=True)
    shards = conftest.write_shards(folder / "train", conftest.digit_samples(1200, "jpg"), 150)
    held_out = conftest.write_shards(
        folder / "heldout", conftest.digit_samples(597, offset=1200), 200
    )
    (folder / "templates.txt").write_text("a photo of the digit {}\n")
    for seed in args.seeds:
        run = folder / f"run-seed{seed}"
        start = time.monotonic()
        code = train(
            [
                "--data", f"{shards[0].parent}/{{00000..00007}}.tar", "--output", str(run),
                "--model", "tiny", "--steps", "300", "--batch-size", "32", "--workers", "2",
                "--lr", "1e-3", "--warmup", "20", "--log-every", "1", "--checkpoint-every", "1000",
                "--eval-every", "300", "--zeroshot", f"{held_out[0].parent}/*.tar",
                "--classnames", ",".join(conftest.NAMES), "--templates", str(folder / "templates.txt"),
                "--seed", str(seed),
            ]
        )  # fmt: skip
        assert code == 0
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]
        record(
            {
                "kind": "tiny-digits",
                "seed": seed,
                "heldout_top1": [r["eval/top-1"] for r in records if "eval/top-1" in r][-1],
                "heldout_images": 597,
                "first_loss": losses[0],
                "end_loss": statistics.fmean(losses[-3:]),
                "seconds": round(time.monotonic() - start, 1),
            }
        )


def choose(rows: list[dict]) -> tuple[tuple[int, float], dict]:
    """-> ((steps, lr) chosen, {(steps, lr): (mean, standard error, runs)}) from validation runs:
    of the settings whose mean is within one standard error of the best mean, the fewest steps
    (the quickest demo), then the higher mean."""
    by_setting: dict[tuple[int, float], list[float]] = {}
    for r in rows:
        by_setting.setdefault((r["steps"], r["lr"]), []).append(r["val_zeroshot_top1"])
    table = {}
    for setting, values in sorted(by_setting.items()):
        mean = statistics.fmean(values)
        # binomial standard error of an accuracy on val_images images, averaged over the runs
        se = (mean * (1 - mean) / rows[0]["val_images"] / len(values)) ** 0.5
        table[setting] = (mean, se, len(values))
    best_mean, best_se, _ = max(table.values())
    near = [s for s, (mean, _, _) in table.items() if mean >= best_mean - best_se]
    return min(near, key=lambda s: (s[0], -table[s][0])), table


def report(args) -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    for digits in sorted({r["digits"] for r in rows if r["kind"] == "select"}):
        sel = [r for r in rows if r["kind"] == "select" and r["digits"] == digits]
        print(f"\nselect, {digits} digits: validation zero-shot top-1")
        print("| steps | lr | runs (seed: top-1) | mean ± se |\n|---|---|---|---|")
        chosen, table = choose(sel)
        for (steps, lr), (mean, se, _) in table.items():
            runs = ", ".join(
                f"{r['seed']}: {r['val_zeroshot_top1']:.3f}"
                for r in sel
                if (r["steps"], r["lr"]) == (steps, lr)
            )
            print(f"| {steps} | {lr:g} | {runs} | {mean:.3f} ± {se:.3f} |")
        logreg = {r["seed"]: r["val_logreg_top1"] for r in sel}
        runs = ", ".join(f"{seed}: {top1:.3f}" for seed, top1 in sorted(logreg.items()))
        print(f"| logistic regression | | {runs} | |")
        print(f"  chosen: {chosen[0]} steps, lr {chosen[1]:g}")
        for r in sel:
            curve = ", ".join(f"{step}: {top1:.3f}" for step, top1 in r["val_curve"])
            print(f"  curve: seed {r['seed']}, {r['steps']} steps, lr {r['lr']:g}: {curve}")
    spreads = [r for r in rows if r["kind"] == "spread"]
    for key in sorted({(r["digits"], r["steps"]) for r in spreads}):
        runs = [r for r in spreads if (r["digits"], r["steps"]) == key]
        print(f"\nspread, {key[0]} digits, {key[1]} steps (held-out)")
        print("| seed | zero-shot | logreg | difference | wall s |\n|---|---|---|---|---|")
        for r in sorted(runs, key=lambda r: r["seed"]):
            diff = r["zeroshot_top1"] - r["logreg_top1"]
            print(
                f"| {r['seed']} | {r['zeroshot_top1']:.3f} | {r['logreg_top1']:.3f} "
                f"| {diff:+.3f} | {r['wall_seconds']} |"
            )
        diffs = [r["zeroshot_top1"] - r["logreg_top1"] for r in runs]
        print(f"  difference: min {min(diffs):+.3f}, mean {statistics.fmean(diffs):+.3f}")
    tiny = [r for r in rows if r["kind"] == "tiny-digits"]
    if tiny:
        print(
            "\ntiny model, 300 steps on digits 0-1199, top-1 on the 597 held-out digits 1200-1796"
        )
        print("| seed | top-1 | loss, last 3 steps | s |\n|---|---|---|---|")
        for r in tiny:
            print(
                f"| {r['seed']} | {r['heldout_top1']:.3f} | {r['end_loss']:.3f} | {r['seconds']} |"
            )
        top1 = [r["heldout_top1"] for r in tiny]
        print(
            f"  min {min(top1):.3f}, mean {statistics.fmean(top1):.3f}, "
            f"sd {statistics.stdev(top1):.3f}"
            if len(top1) > 1
            else ""
        )
    for r in (r for r in rows if r["kind"] == "full"):
        print(f"\nfull: {r['command']} at {r['commit']} on {r['machine']} (load {r['load']:.2f})")
        print(f"  {r['wall_seconds']} s wall\n" + r["printed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nice", type=int, default=0, help="run at this niceness")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("select")
    p.add_argument("--digits", type=int, default=1797)
    p.add_argument("--steps", type=int, nargs="+", default=[200, 400, 800, 1600])
    p.add_argument("--lrs", type=float, nargs="+", default=[5e-4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p = sub.add_parser("spread")
    p.add_argument("--digits", type=int, default=600)
    p.add_argument("--steps", type=int, nargs="+", default=[300])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p = sub.add_parser("full")
    p.add_argument("--output", type=Path, default=OUT / "full")
    p = sub.add_parser("tiny-digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    sub.add_parser("report")
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    commands = {"select": select, "spread": spread, "full": full, "tiny-digits": tiny_digits}
    {**commands, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
