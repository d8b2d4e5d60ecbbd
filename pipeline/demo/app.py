"""`webpairs demo` (`make demo`): the whole system on a laptop, on the CPU, with no network.

    webpairs demo --output demo-out

1. Renders scikit-learn's bundled handwritten digits as web-sized JPEG/PNG files with alt-text
   captions in varied phrasings, and the noise of a real URL list: wrong and empty captions,
   boilerplate captions, the same image under several URLs (some re-encoded or resized), rotted
   links, an HTML page posing as an image, a truncated download — and a few held-out evaluation
   images that leaked onto "the web".
2. Serves them from a loopback HTTP server that this command starts and stops.
3. Curates them on Beam's DirectRunner: download -> filters -> decontamination against the
   held-out images -> exact and near dedupe -> shards, with the funnel report.
4. Trains a BPE tokenizer on the shards' captions and a small CLIP on the shards
   (`python -m trainer`, a separate process: the pipeline never imports the trainer).
5. Evaluates zero-shot top-1 on the held-out digits (never in the training shards: the
   decontamination report proves it) against a logistic regression on the same raw pixels.
6. Writes a training-curve PNG, a confusion-matrix PNG, `summary.html` linking everything and
   `demo.json` (the figures, for scripts and tests).

`--validation` runs the same demo with a quarter of the *training* digits in place of the held-out
ones (the web is made of the rest): the run that chooses the demo's settings
(`bench/demo.py select`), which never reads the held-out digits.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.demo.plots import confusion_png, curve_png, summary_html
from pipeline.demo.web import (
    DIGIT_NAMES,
    PHRASINGS,
    LoopbackServer,
    build_web,
    split_digits,
    stratified_split,
)

logger = logging.getLogger(__name__)

# Zero-shot prompts: the caption phrasings that name the digit in words (an ensemble of prompts,
# as CLIP does; the numeral phrasings cannot take a class name).
TEMPLATES = tuple(p.replace("{name}", "{}") for p in PHRASINGS if "{digit}" not in p)


@dataclass(frozen=True)
class DemoConfig:
    output: Path
    digits: int = 1797  # how many of scikit-learn's digits to use (all by default)
    held_out: float = 0.25  # fraction of the digits kept for zero-shot evaluation
    image_size: int = 32  # what the shards store and the model sees
    # steps and lr: the best validation top-1 of a small grid (`bench/demo.py select`, on a split
    # of the training digits, never the held-out ones; bench/RESULTS-demo.md); batch size as set.
    steps: int = 200
    batch_size: int = 64
    lr: float = 4e-3
    seed: int = 0
    # Evaluate on a validation split of the training digits instead of the held-out digits (for
    # choosing settings): the held-out digits are then neither rendered nor read.
    validation: bool = False


def demo_digits(cfg: DemoConfig) -> tuple[list[int], list[int]]:
    """(digits the web is made of, digits the model is evaluated on).

    The held-out digits, or with `cfg.validation` a split of the training digits alone (the same
    fraction again): the held-out ones are then returned in neither list."""
    train, held_out = split_digits(cfg.digits, cfg.held_out, cfg.seed)
    if not cfg.validation:
        return train, held_out
    return stratified_split(train, cfg.held_out, cfg.seed)


def curate(cfg: DemoConfig, rows: list[dict], heldout: Path, prog: str) -> int:
    from pipeline.jobs import curate as curate_job

    out = cfg.output
    recipe = {
        "stages": ["filters", "decontaminate", "exact_dedupe", "near_dedupe"],
        "captions": {"clean": True},
        "filters": {"require_caption": True, "drop_boilerplate": True, "min_side": 32},
        "decontaminate": {"source": str(heldout), "threshold": 2},
        # Handwritten digits of one class look alike at 8x8: only near-identical copies are duplicates.
        "near_dedupe": {"threshold": 2},
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1))
    with LoopbackServer(out / "web") as base:
        table = pa.Table.from_pylist(
            [
                {"url": f"{base}/{r['path']}", "caption": r["caption"], "label": r["label"]}
                for r in rows
            ]
        )
        pq.write_table(table, out / "urls.parquet")
        logger.info("demo: serving %d URLs from %s; curating on DirectRunner", len(rows), base)
        return curate_job.main(
            [
                "--input", str(out / "urls.parquet"), "--output", str(out / "dataset"),
                "--image-size", str(cfg.image_size), "--resize-mode", "center_crop", "--encode-format", "png",
                "--save-additional-columns", "label", "--recipe", str(out / "recipe.json"),
                "--samples-per-shard", "256", "--retries", "1", "--overwrite",
                "--allow-networks", "127.0.0.1/32",  # the demo's own loopback server
            ],
            prog=prog,
        )  # fmt: skip


def _trainer(*args: str) -> subprocess.CompletedProcess:
    """`python -m trainer ...` in its own process, its log lines passed through as they come."""
    cmd = [sys.executable, "-m", "trainer", *args]
    logger.info("demo: %s", " ".join(cmd[1:]))
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)


def train_and_evaluate(cfg: DemoConfig, heldout: Path) -> dict:
    out = cfg.output
    manifest = str(out / "dataset" / "manifest.json")
    (out / "classnames.txt").write_text("\n".join(DIGIT_NAMES) + "\n")
    (out / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run each time the demo is run
    _trainer(
        "tokenizer",
        "train",
        "--data",
        manifest,
        "--output",
        str(out / "tokenizer.json"),
        "--vocab-size",
        "400",
    )
    _trainer(
        "train", "--data", manifest, "--output", str(out / "run"),
        "--tokenizer", str(out / "tokenizer.json"), "--model", "tiny-resnet", "--image-size", str(cfg.image_size),
        "--context-length", "16", "--steps", str(cfg.steps), "--batch-size", str(cfg.batch_size),
        "--lr", str(cfg.lr), "--warmup", "100", "--workers", "1", "--seed", str(cfg.seed),
        # points for the training curve: 40 of the loss, 10 of top-1 (each eval: ~0.2 s)
        "--log-every", str(max(1, cfg.steps // 40)), "--eval-every", str(max(1, cfg.steps // 10)),
        "--zeroshot", str(heldout),
        "--classnames", str(out / "classnames.txt"), "--templates", str(out / "templates.txt"),
    )  # fmt: skip
    _trainer(
        "eval", "--checkpoint", str(out / "run"), "--zeroshot", str(heldout),
        "--classnames", str(out / "classnames.txt"), "--templates", str(out / "templates.txt"),
        "--details", str(out / "zeroshot.json"),
    )  # fmt: skip
    return json.loads((out / "zeroshot.json").read_text())


def pixel_baseline(cfg: DemoConfig) -> float:
    """Supervised logistic regression on the raw 8x8 pixels of the same digits: fitted on those
    the web is made of, scored on those the zero-shot model is evaluated on."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    train, test = demo_digits(cfg)
    clf = LogisticRegression(max_iter=5000).fit(digits.data[train], digits.target[train])
    return float(clf.score(digits.data[test], digits.target[test]))


def write_figures(cfg: DemoConfig, zeroshot: dict, baseline: float, seconds: float) -> Path:
    """`demo.json`: the run's settings and figures, for scripts (bench/demo.py) and tests."""
    web_digits, eval_digits = demo_digits(cfg)
    figures = {
        "evaluated_on": "validation" if cfg.validation else "held-out",
        "zeroshot_top1": zeroshot["results"]["top-1"],
        "logreg_top1": baseline,
        "eval_digits": len(eval_digits),
        "web_digits": len(web_digits),
        **{k: getattr(cfg, k) for k in ("digits", "steps", "batch_size", "lr", "seed")},
        "seconds": round(seconds, 1),
    }
    path = cfg.output / "demo.json"
    path.write_text(json.dumps(figures, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None, prog: str = "webpairs demo") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default="demo-out", help="folder for everything the demo writes"
    )
    parser.add_argument("--steps", type=int, default=DemoConfig.steps, help="training steps")
    parser.add_argument("--batch-size", type=int, default=DemoConfig.batch_size)
    parser.add_argument("--lr", type=float, default=DemoConfig.lr, help="peak learning rate")
    parser.add_argument(
        "--digits", type=int, default=DemoConfig.digits, help="fewer digits: a quicker, weaker demo"
    )
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument(
        "--validation",
        action="store_true",
        help="evaluate on a validation split of the training digits (for choosing settings); "
        "the held-out digits are not used",
    )
    parser.add_argument("--skip-training", action="store_true", help="stop after curation")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    cfg = DemoConfig(
        output=Path(args.output),
        digits=args.digits,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        validation=args.validation,
    )
    start = time.monotonic()
    cfg.output.mkdir(parents=True, exist_ok=True)
    rows, heldout, noise = build_web(cfg, *demo_digits(cfg))
    logger.info("demo: %d web pairs rendered, planted noise %s", len(rows), noise)
    code = curate(cfg, rows, heldout, prog)
    if code != 0 or args.skip_training:
        return code
    try:
        zeroshot = train_and_evaluate(cfg, heldout)
    except subprocess.CalledProcessError as e:
        sys.stderr.write(
            f"{prog}: error: {' '.join(e.cmd[1:3])} failed with exit code {e.returncode}\n"
        )
        return 1
    baseline = pixel_baseline(cfg)
    top1 = zeroshot["results"]["top-1"]
    digits = "validation digits" if cfg.validation else "held-out digits"
    curve_png(
        cfg.output / "run" / "metrics.jsonl", cfg.output / "training_curve.png", baseline, digits
    )
    confusion_png(
        zeroshot["confusion"], zeroshot["classnames"], cfg.output / "confusion.png", digits
    )
    found = json.loads((cfg.output / "dataset" / "decontamination.json").read_text())
    seconds = time.monotonic() - start
    summary_html(cfg.output, top1, baseline, noise, found, seconds)
    write_figures(cfg, zeroshot, baseline, seconds)
    verdict = "at or above" if top1 >= baseline else "below"
    evaluated_on = "validation" if cfg.validation else "held-out"
    sys.stdout.write(
        f"zero-shot top-1 on {zeroshot['results']['zeroshot_images']:.0f} {evaluated_on} digits: {top1:.3f} "
        f"({verdict} the logistic regression on raw pixels: {baseline:.3f})\n"
        f"{evaluated_on} digits matched on the web, their copies removed: {len(found['found'])} "
        f"({noise['leaked']} leaks were planted; look-alike digits within the threshold match too)\n"
        f"pictures: {cfg.output / 'training_curve.png'}, {cfg.output / 'confusion.png'}; "
        f"funnel: {cfg.output / 'dataset' / 'report.html'}\n"
        f"summary: {cfg.output / 'summary.html'}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
