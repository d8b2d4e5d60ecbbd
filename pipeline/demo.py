"""`webpairs demo`: the curation job end to end on bundled data, with no network.

    webpairs demo --output demo-out

Renders scikit-learn's bundled handwritten digits (and its two sample photos) as web-sized
JPEG/PNG files with alt-text-like captions and some realistic noise (missing files, an HTML
page posing as an image, a truncated JPEG, the same URL spelled twice), serves them from a
loopback HTTP server that this command starts and stops, and curates them into shards.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import random
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

logger = logging.getLogger(__name__)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = (
    "a handwritten digit {name}",
    "the number {digit} written by hand",
    "handwritten {name} on a white background",
    "scan of a hand-written {digit}",
    "{name}",
)


def render_digit(pixels, size: int, rng: random.Random) -> Image.Image:
    """An 8x8 sklearn digit (values 0..16) as a dark-on-light image of `size` px."""
    import numpy as np

    arr = (
        (255 - np.asarray(pixels, dtype=float).reshape(8, 8) * 255 / 16)
        .clip(0, 255)
        .astype("uint8")
    )
    im = Image.fromarray(arr, "L").resize((size, size), Image.Resampling.BICUBIC)
    tint = tuple(rng.randint(225, 255) for _ in range(3))
    return Image.merge("RGB", [im.point(lambda v, t=t: v * t // 255) for t in tint])


def build_site(folder: Path, n_digits: int, seed: int = 0) -> list[dict]:
    """Writes the files to serve under `folder`; returns the pair rows (path, caption)."""
    from sklearn.datasets import load_digits, load_sample_images

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rows = []
    for i in range(min(n_digits, len(digits.images))):
        label = int(digits.target[i])
        size = rng.choice((64, 96, 128, 192))
        ext = "jpg" if i % 3 else "png"
        name = f"digits/{i:05d}.{ext}"
        (folder / "digits").mkdir(exist_ok=True)
        render_digit(digits.data[i], size, rng).save(folder / name, quality=90)
        caption = rng.choice(PHRASINGS).format(name=DIGIT_NAMES[label], digit=label)
        rows.append({"path": name, "caption": caption, "label": label})
    for j, photo in enumerate(load_sample_images().images):
        name = f"photos/{j}.jpg"
        (folder / "photos").mkdir(exist_ok=True)
        Image.fromarray(photo).save(folder / name, quality=90)
        rows.append(
            {"path": name, "caption": ("a temple in China", "a flower in bloom")[j], "label": -1}
        )
    # Noise a real URL list has.
    (folder / "broken").mkdir(exist_ok=True)
    (folder / "broken/page.jpg").write_bytes(b"<!doctype html><title>Not Found</title>")
    buf = io.BytesIO()
    render_digit(digits.data[0], 128, rng).save(buf, "JPEG")
    (folder / "broken/truncated.jpg").write_bytes(buf.getvalue()[:300])
    rows += [
        {"path": "broken/page.jpg", "caption": "html pretending to be an image", "label": -1},
        {"path": "broken/truncated.jpg", "caption": "a truncated download", "label": -1},
        {"path": "gone/404.jpg", "caption": "a link that rotted", "label": -1},
        {"path": rows[0]["path"] + "#again", "caption": "the same URL twice", "label": -1},
    ]
    return rows


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


def main(argv: list[str] | None = None, prog: str = "webpairs demo") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default="demo-out", help="folder for everything the demo writes"
    )
    parser.add_argument("--digits", type=int, default=600, help="how many digit images to serve")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("apache_beam").setLevel(logging.WARNING)

    from pipeline import curate

    out = Path(args.output)
    web = out / "web"
    logger.info("rendering %d digits and 2 photos into %s", args.digits, web)
    rows = build_site(web, args.digits)
    with LoopbackServer(web) as base:
        table = pa.Table.from_pylist(
            [
                {"url": f"{base}/{r['path']}", "caption": r["caption"], "label": r["label"]}
                for r in rows
            ]
        )
        pq.write_table(table, out / "urls.parquet")
        logger.info("serving %d URLs from %s", len(rows), base)
        code = curate.main(
            [
                "--input", str(out / "urls.parquet"),
                "--output", str(out / "dataset"),
                "--image-size", str(args.image_size), "--resize-mode", "center_crop",
                "--save-additional-columns", "label",
                "--samples-per-shard", "200", "--retries", "1", "--overwrite",
                "--allow-private-networks",  # the demo's own loopback server
                # Handwritten digits of one class look alike at 8x8: only near-identical copies are duplicates.
                "--near-dup-threshold", "4",
            ],
            prog=prog,
        )  # fmt: skip
    if code == 0:
        sys.stdout.write(
            f"shards: {out / 'dataset' / 'shards'}\nmanifest: {out / 'dataset' / 'manifest.json'}\n"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
