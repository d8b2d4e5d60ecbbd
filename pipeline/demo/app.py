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
import functools
import io
import json
import logging
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.demo.plots import confusion_png, curve_png, summary_html

logger = logging.getLogger(__name__)


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


PHRASINGS = (
    "a handwritten digit {name}",
    "the number {digit} written by hand",
    "handwritten {name} on a white background",
    "scan of a hand-written {digit}",
    "a photo of the digit {name}",
    "digit {digit}, handwriting sample",
    "{name}",
    "the numeral {name} drawn with a pen",
)


# Zero-shot prompts: the caption phrasings that name the digit in words (an ensemble of prompts,
# as CLIP does; the numeral phrasings cannot take a class name).
TEMPLATES = tuple(p.replace("{name}", "{}") for p in PHRASINGS if "{digit}" not in p)


BOILERPLATE = ("IMG_{n:04d}.jpg", "image", "untitled", "DSC{n:05d}", "640x480")


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


def render_digit(pixels, size: int, rng: random.Random) -> Image.Image:
    """An 8x8 sklearn digit (values 0..16) as a dark-on-light RGB image of `size` px."""
    arr = (
        (255 - np.asarray(pixels, dtype=float).reshape(8, 8) * 255 / 16)
        .clip(0, 255)
        .astype("uint8")
    )
    im = Image.fromarray(arr, "L").resize((size, size), Image.Resampling.BICUBIC)
    tint = tuple(rng.randint(225, 255) for _ in range(3))
    return Image.merge("RGB", [im.point(lambda v, t=t: v * t // 255) for t in tint])


def _save(im: Image.Image, path: Path, rng: random.Random) -> str:
    """Writes `im` as JPEG or PNG (the web has both); returns the file name used."""
    ext = "jpg" if rng.random() < 0.6 else "png"
    path = path.with_suffix(f".{ext}")
    im.save(path, quality=rng.randint(75, 95)) if ext == "jpg" else im.save(path)
    return path.name


def stratified_split(idx: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """`idx` (indices of scikit-learn's 1,797 digits) split in two, `fraction` of each class in
    the second part."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    idx = np.asarray(idx)
    labels = load_digits().target[idx]
    first, second = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    return sorted(first.tolist()), sorted(second.tolist())


def split_digits(n: int, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified train / held-out indices of the first `n` of the 1,797 digits."""
    from sklearn.datasets import load_digits

    return stratified_split(list(range(min(n, len(load_digits().target)))), held_out, seed)


def demo_digits(cfg: DemoConfig) -> tuple[list[int], list[int]]:
    """(digits the web is made of, digits the model is evaluated on).

    The held-out digits, or with `cfg.validation` a split of the training digits alone (the same
    fraction again): the held-out ones are then returned in neither list."""
    train, held_out = split_digits(cfg.digits, cfg.held_out, cfg.seed)
    if not cfg.validation:
        return train, held_out
    return stratified_split(train, cfg.held_out, cfg.seed)


def build_web(
    cfg: DemoConfig, web_digits: list[int], eval_digits: list[int]
) -> tuple[list[dict], Path, dict]:
    """-> (pair rows with site paths, the evaluation folder, counts of the planted noise)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(cfg.seed)
    web = cfg.output / "web"
    heldout = cfg.output / ("validation" if cfg.validation else "heldout")
    for folder in (web, heldout):  # left by an earlier run into the same output
        shutil.rmtree(folder, ignore_errors=True)
    for d in ("digits", "copies", "broken"):
        (web / d).mkdir(parents=True)
    noise = dict.fromkeys(("wrong", "empty", "boilerplate", "copies", "rotted", "leaked"), 0)
    rows = []
    for i in web_digits:
        label = int(digits.target[i])
        im = render_digit(digits.data[i], rng.choice((48, 64, 96, 128, 160)), rng)
        name = _save(im, web / "digits" / f"{i:05d}", rng)
        caption = rng.choice(PHRASINGS).format(name=DIGIT_NAMES[label], digit=label)
        roll = rng.random()
        if roll < 0.02:  # a wrong caption: the label noise a crawl cannot see
            caption = rng.choice(PHRASINGS).format(
                name=DIGIT_NAMES[(label + rng.randint(1, 9)) % 10], digit=(label + 1) % 10
            )
            noise["wrong"] += 1
        elif roll < 0.05:
            caption = ""
            noise["empty"] += 1
        elif roll < 0.08:
            caption = rng.choice(BOILERPLATE).format(n=i)
            noise["boilerplate"] += 1
        rows.append({"path": f"digits/{name}", "caption": caption, "label": label})
        if rng.random() < 0.06:  # the same image elsewhere: re-encoded and resized
            copy = _save(im.resize((im.width * 3 // 4,) * 2), web / "copies" / f"{i:05d}", rng)
            rows.append({"path": f"copies/{copy}", "caption": caption, "label": label})
            noise["copies"] += 1
    for i in eval_digits:  # the evaluation set, one folder per class
        label = DIGIT_NAMES[int(digits.target[i])]
        (heldout / label).mkdir(parents=True, exist_ok=True)
        im = render_digit(digits.data[i], 64, rng)
        im.save(heldout / label / f"{i:05d}.png")
        if rng.random() < 0.03:  # leaked onto the web: decontamination must catch it
            leaked = _save(
                im.resize((96, 96), Image.Resampling.BICUBIC), web / "copies" / f"leak-{i:05d}", rng
            )
            rows.append(
                {
                    "path": f"copies/{leaked}",
                    "caption": f"a handwritten digit {label}",
                    "label": int(digits.target[i]),
                }
            )
            noise["leaked"] += 1
    (web / "broken/page.jpg").write_bytes(b"<!doctype html><title>Not Found</title>")
    buf = io.BytesIO()
    render_digit(digits.data[web_digits[0]], 128, rng).save(buf, "JPEG")
    (web / "broken/truncated.jpg").write_bytes(buf.getvalue()[:300])
    rows += [
        {"path": "broken/page.jpg", "caption": "a handwritten digit two", "label": -1},
        {"path": "broken/truncated.jpg", "caption": "a handwritten digit zero", "label": -1},
    ]
    for k in range(8):
        rows.append({"path": f"gone/{k}.jpg", "caption": "a handwritten digit one", "label": -1})
        noise["rotted"] += 1
    rows.append(
        {
            "path": rows[0]["path"] + "#same-url",
            "caption": rows[0]["caption"],
            "label": rows[0]["label"],
        }
    )
    rng.shuffle(rows)
    return rows, heldout, noise


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class LoopbackServer:
    """Serves a folder on 127.0.0.1 from a background thread: `with LoopbackServer(dir) as base_url:`."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


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
                "--image-size", str(cfg.image_size), "--resize-mode", "center_crop", "--output-format", "png",
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
    curve_png(cfg.output / "run" / "metrics.jsonl", cfg.output / "training_curve.png")
    confusion_png(zeroshot["confusion"], zeroshot["classnames"], cfg.output / "confusion.png")
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
