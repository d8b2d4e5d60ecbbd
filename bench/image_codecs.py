"""Image work per codec stack: CPU-ms per image and PSNR against a full-resolution reference.

    .venv/bin/python bench/image_codecs.py --images bench/out/crawl/images-2000-seed0 --count 300

The crawl's image work is decode -> resize (keep_ratio, smaller side to 256) -> JPEG q95
encode. Each stack below does that job on the same JPEGs; a stack's time is the CPU time of
the process (time.process_time: libvips works in threads of its own) summed over the images, with the stacks interleaved
image by image so that other load on the machine falls on all of them alike. The reference
for PSNR is a full-resolution decode resized by Pillow's Lanczos in one step (no draft, no
reducing gap); each stack's output is decoded again, so the score includes its encoder.

  pillow         the pipeline at HEAD before issue 15: Image.draft (power-of-two DCT scaling),
                 BICUBIC with reducing_gap=3, Pillow's q95 encoder (GIL held while encoding)
  pillow-box     the same with Pillow's BOX filter after draft: an area average, as cv2's
                 INTER_AREA (also pillow-bilinear, pillow-hamming: the other cheap filters)
  turbo-pow2     simplejpeg decode at the power-of-two scale draft would pick + cv2 INTER_AREA
                 + simplejpeg q95 encode (libjpeg-turbo; every step releases the GIL)
  turbo-m8       the same with libjpeg-turbo's M/8 scaling down to just above the target
  pillow+turbo   Pillow decode and resize as in `pillow`, simplejpeg encode
  cv2-full       img2dataset's path: cv2.imdecode at full size, INTER_AREA, cv2.imencode q95
  vips           pyvips thumbnail_buffer (shrink-on-load + lanczos3), Q=95 jpegsave
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 256


def target(width: int, height: int) -> tuple[int, int]:
    scale = SIZE / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def pillow(data: bytes) -> bytes:
    im = Image.open(io.BytesIO(data))
    tw, th = target(*im.size)
    im.draft("RGB", (tw, th))
    im = im.convert("RGB").resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, optimize=False)
    return buf.getvalue()


def _pillow_with(resample: Image.Resampling, reducing_gap: float | None = None):
    def stack(data: bytes) -> bytes:
        im = Image.open(io.BytesIO(data))
        tw, th = target(*im.size)
        im.draft("RGB", (tw, th))
        im = im.convert("RGB").resize((tw, th), resample, reducing_gap=reducing_gap)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95, optimize=False)
        return buf.getvalue()

    return stack


def _pow2_scale(width: int, height: int, tw: int, th: int) -> int:
    """The largest 1/2^k (k <= 3) that keeps the image at least tw x th, as Pillow's draft."""
    scale = 1
    while scale < 8 and width // (scale * 2) >= tw and height // (scale * 2) >= th:
        scale *= 2
    return scale


def turbo_pow2(data: bytes) -> bytes:
    import cv2
    import simplejpeg

    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    tw, th = target(width, height)
    s = _pow2_scale(width, height, tw, th)
    rgb = simplejpeg.decode_jpeg(data, "RGB", min_width=-(-width // s), min_height=-(-height // s))
    rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    return simplejpeg.encode_jpeg(rgb, 95, "RGB", "420")


def _turbo_pow2_decode(data: bytes) -> tuple[np.ndarray, int, int]:
    import simplejpeg

    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    tw, th = target(width, height)
    s = _pow2_scale(width, height, tw, th)
    rgb = simplejpeg.decode_jpeg(data, "RGB", min_width=-(-width // s), min_height=-(-height // s))
    return rgb, tw, th


def turbo_pow2_pillow(data: bytes) -> bytes:
    import simplejpeg

    rgb, tw, th = _turbo_pow2_decode(data)
    im = Image.fromarray(rgb).resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return simplejpeg.encode_jpeg(np.asarray(im), 95, "RGB", "420")


def turbo_pow2_linear(data: bytes) -> bytes:
    import cv2
    import simplejpeg

    rgb, tw, th = _turbo_pow2_decode(data)
    rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_LINEAR)
    return simplejpeg.encode_jpeg(rgb, 95, "RGB", "420")


def turbo_m8(data: bytes) -> bytes:
    import cv2
    import simplejpeg

    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    tw, th = target(width, height)
    rgb = simplejpeg.decode_jpeg(data, "RGB", min_width=tw, min_height=th)
    rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    return simplejpeg.encode_jpeg(rgb, 95, "RGB", "420")


def pillow_turbo(data: bytes) -> bytes:
    import simplejpeg

    im = Image.open(io.BytesIO(data))
    tw, th = target(*im.size)
    im.draft("RGB", (tw, th))
    im = im.convert("RGB").resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return simplejpeg.encode_jpeg(np.asarray(im), 95, "RGB", "420")


def cv2_full(data: bytes) -> bytes:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    th, tw = bgr.shape[:2]
    tw, th = target(tw, th)
    bgr = cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def vips(data: bytes) -> bytes:
    import pyvips

    head = pyvips.Image.new_from_buffer(data, "", access="sequential")
    tw, th = target(head.width, head.height)
    im = pyvips.Image.thumbnail_buffer(data, tw, height=th, size="force")
    return im.write_to_buffer(".jpg", Q=95, subsample_mode="on")


STACKS: dict[str, Callable[[bytes], bytes]] = {
    "pillow": pillow,
    "pillow-box": _pillow_with(Image.Resampling.BOX),
    "pillow-bilinear": _pillow_with(Image.Resampling.BILINEAR),
    "pillow-hamming": _pillow_with(Image.Resampling.HAMMING),
    "turbo-pow2": turbo_pow2,
    "turbo-m8": turbo_m8,
    "turbo-pow2+pillow-resize": turbo_pow2_pillow,
    "turbo-pow2-linear": turbo_pow2_linear,
    "pillow+turbo": pillow_turbo,
    "cv2-full": cv2_full,
    "vips": vips,
}


def reference(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(im.resize(target(*im.size), Image.Resampling.LANCZOS), dtype=np.float64)


def psnr(out: bytes, ref: np.ndarray) -> float:
    got = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"), dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"size {got.shape} != reference {ref.shape}")
    mse = float(np.mean((got - ref) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of *.jpg")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--stacks", default=",".join(STACKS))
    args = parser.parse_args(argv)
    stacks = {name: STACKS[name] for name in args.stacks.split(",")}
    files = sorted(args.images.glob("*.jpg"))[: args.count]
    if "vips" in stacks:
        import pyvips

        pyvips.cache_set_max(0)  # no reuse of an earlier result: every image is decoded anew
    for fn in stacks.values():  # imports and first-call set-up outside the timing
        fn(files[0].read_bytes())
    cpu = {name: 0.0 for name in stacks}
    scores: dict[str, list[float]] = {name: [] for name in stacks}
    nbytes = {name: 0 for name in stacks}
    sizes = []
    for path in files:
        data = path.read_bytes()
        sizes.append(len(data))
        ref = reference(data)
        for name, fn in stacks.items():
            start = time.process_time()
            out = fn(data)
            cpu[name] += time.process_time() - start
            scores[name].append(psnr(out, ref))
            nbytes[name] += len(out)
    n = len(files)
    print(
        f"{n} JPEGs from {args.images}: {statistics.median(sizes) / 1e3:.0f} KB median, "
        f"keep_ratio {SIZE}, q95; one thread"
    )
    print("| stack | CPU-ms/image | vs pillow | PSNR dB (mean) | PSNR dB (min) | KB out |")
    print("|---|---:|---:|---:|---:|---:|")
    base = cpu.get("pillow")
    for name in stacks:
        ms = 1e3 * cpu[name] / n
        rel = f"{cpu[name] / base:.2f}x" if base else "-"
        print(
            f"| {name} | {ms:.2f} | {rel} | {statistics.fmean(scores[name]):.2f} | "
            f"{min(scores[name]):.2f} | {nbytes[name] / n / 1e3:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
