"""Does CLIP-score selection from scratch remove mismatched captions? Noisy digit pairs with
known labels (bench/learning.py's web: several phrasings, 15 % wrong digits, 5 % junk captions),
curated, then the top 70 % by CLIP score kept with `webpairs select`, the scores made by

  same      a scorer trained on all the pairs it scores (today's loop without cross-fitting)
  crossfit  `webpairs score --cross-fit K`: each pair scored by the model that never saw it

    .venv/bin/python bench/crossfit.py data
    .venv/bin/python bench/crossfit.py run --mode same --steps 2000
    .venv/bin/python bench/crossfit.py run --mode crossfit --folds 2 --steps 2000
    .venv/bin/python bench/crossfit.py report

`data` renders the digits (bench/learning.py's `make_data`, seed 0, the held-out quarter never
read here) and curates them with no stage (`--recipe none`, every pair kept, the true label and
caption kind as extra columns). Each `run` scores a copy of that output (the scorer's flags:
`--model tiny --steps N --batch-size B --workers 2 --seed S`), selects, and appends the
shares of mismatched (wrong or junk) captions to bench/out/crossfit/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
OUT = REPO / "bench" / "out" / "crossfit"
RESULTS = OUT / "results.jsonl"
TOP = 0.7


def webpairs(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "webpairs_cli.py"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed:\n{proc.stderr[-3000:]}")


def trainer(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "trainer", "train", *args]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shares(dataset: Path) -> dict:
    """Pairs, and the share of wrong / junk / mismatched captions, from an output's parquet."""
    import pyarrow.dataset as ds

    files = sorted(str(p) for p in (dataset / "shards").glob("*.parquet"))
    kinds = ds.dataset(files, format="parquet").to_table(columns=["caption_kind"])
    kinds = kinds.column("caption_kind").to_pylist()
    n = len(kinds)
    wrong, junk = kinds.count("wrong"), kinds.count("junk")
    return {
        "pairs": n,
        "wrong": round(wrong / n, 4),
        "junk": round(junk / n, 4),
        "mismatched": round((wrong + junk) / n, 4),
    }


def data(args) -> None:
    from learning import make_data

    web = OUT / "web"
    shutil.rmtree(web, ignore_errors=True)
    info = make_data(web, seed=args.seed)
    round0 = OUT / "round0"
    webpairs(
        "curate", "--input", str(web / "shards"), "--input-format", "webdataset",
        "--output", str(round0), "--overwrite", "--recipe", "none", "--resize-mode", "no",
        "--save-additional-columns", "label,caption_kind", "--samples-per-shard", "400",
    )  # fmt: skip
    print(json.dumps({"captions": info["captions"], **shares(round0)}))


def run(args) -> None:
    name = f"{args.mode}{args.folds if args.mode == 'crossfit' else ''}-{args.steps}-s{args.seed}"
    work = OUT / "runs" / name
    shutil.rmtree(work, ignore_errors=True)
    dataset = work / "data"
    shutil.copytree(OUT / "round0", dataset)
    flags = ["--model", "tiny", "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    flags += ["--workers", "2", "--seed", str(args.seed), "--log-every", "100"]
    start = time.monotonic()
    if args.mode == "same":
        commands = [
            f"webpairs train --data DATA/manifest.json --output RUN {' '.join(flags)}",
            "webpairs score --input DATA --score-checkpoint RUN",
        ]
        trainer("--data", str(dataset / "manifest.json"), "--output", str(work / "run"), *flags)
        webpairs("score", "--input", str(dataset), "--score-checkpoint", str(work / "run"))
    else:
        cross = ["--cross-fit", str(args.folds)]
        commands = [f"webpairs score --input DATA {' '.join(cross)} -- {' '.join(flags)}"]
        webpairs("score", "--input", str(dataset), *cross, "--", *flags)
    seconds = time.monotonic() - start
    recipe = work / "top70.json"
    recipe.write_text(json.dumps({"stages": ["clip_score"], "clip_score": {"top_fraction": TOP}}))
    selected = work / "selected"
    webpairs("select", "--input", str(dataset), "--output", str(selected), "--recipe", str(recipe))
    commands.append(f"webpairs select --input DATA --output SEL --recipe top70.json  # {recipe}")
    from learning import commit, machine

    row = {
        "mode": args.mode,
        "folds": args.folds if args.mode == "crossfit" else None,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "before": shares(dataset),
        "after": shares(selected),
        "train_and_score_seconds": round(seconds, 1),
        "commands": commands,
        "commit": commit(),
        "machine": machine(),
        "load": os.getloadavg()[0],
    }
    row["mismatched_cut"] = round(1 - row["after"]["mismatched"] / row["before"]["mismatched"], 3)
    OUT.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def report(args) -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    print("| scorer | steps × batch | seed | pairs kept | mismatched before → after (cut) "
          "| wrong | junk | train + score s | commit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        scorer = "same pairs" if r["mode"] == "same" else f"cross-fit K={r['folds']}"
        b, a = r["before"], r["after"]
        print(
            f"| {scorer} | {r['steps']} × {r['batch_size']} | {r['seed']} | {a['pairs']} "
            f"| {b['mismatched']:.3f} → {a['mismatched']:.3f} ({r['mismatched_cut']:.0%}) "
            f"| {b['wrong']:.3f} → {a['wrong']:.3f} | {b['junk']:.3f} → {a['junk']:.3f} "
            f"| {r['train_and_score_seconds']:.0f} | {r['commit']} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("--mode", choices=["same", "crossfit"], required=True)
    r.add_argument("--folds", type=int, default=2)
    r.add_argument("--steps", type=int, default=2000)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--seed", type=int, default=0)
    sub.add_parser("report")
    args = p.parse_args()
    {"data": data, "run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
