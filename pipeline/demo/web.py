"""The demo's noisy web: scikit-learn's digits rendered as web images with alt-text in varied
phrasings and the noise of a real URL list, and the loopback server that serves them.

    rows, eval_dir, noise = build_web(cfg, web_digits, eval_digits)  # files under cfg.output/web
    with LoopbackServer(cfg.output / "web") as base_url: ...            # the site a crawl reads
"""

from __future__ import annotations

import functools
import io
import logging
import random
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from pipeline.demo.app import DemoConfig

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


BOILERPLATE = ("IMG_{n:04d}.jpg", "image", "untitled", "DSC{n:05d}", "640x480")


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
