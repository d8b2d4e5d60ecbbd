"""Decoding and resizing images with Pillow: pure functions, free of Beam, so that decode worker
processes import only this (the stage around them is pipeline/crawl/decode.py).

    out = decode_and_resize(jpeg_bytes, ImageConfig(image_size=256, resize_mode="keep_ratio"))
    out.data, out.width, out.height

Resize modes mean what they mean in img2dataset:
  no                  keep the size (and the original bytes when no re-encoding is needed)
  keep_ratio          smaller side to image_size
  keep_ratio_largest  larger side to image_size
  center_crop         smaller side to image_size, then the centre image_size x image_size
  border              larger side to image_size, then padded to a square (letterbox)
JPEG is decoded at reduced scale (`Image.draft`) when the target is at least 2x smaller,
which is most of the speed of this stage.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from schemas import Reason, Status
from schemas.imagehash import DECODE_ERRORS, image_hashes

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")


ENCODE_FORMATS = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}


_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def sniff_mime(data: bytes) -> str | None:
    """Image MIME type from the magic bytes, or None when the bytes are not a known image."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "image/avif" if data[8:11] == b"avi" else "image/heif"
    return None


class ImageError(ValueError):
    def __init__(self, reason: str, detail: str, status: str = Status.FAILED):
        super().__init__(detail)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class ImageConfig:
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = False  # never upscale
    encode_format: str = "jpg"  # jpg | webp | png: the codec of the images in the shards
    encode_quality: int = 95  # jpg/webp quality; png compress level is fixed
    max_pixels: int = (
        89_478_485  # decompression-bomb cap (Pillow's default), checked from the header
    )
    min_image_size: int = 0  # filter: smaller side of the original below this -> filtered
    max_aspect_ratio: float = math.inf  # filter: larger/smaller side of the original above this
    background: tuple[int, int, int] = (255, 255, 255)  # what transparency becomes
    threads: int = 0  # decode threads per worker; 0 = twice the number of CPUs (measured best)
    processes: int = 0  # decode in this many worker processes (0: in the worker's threads)

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"resize mode {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}"
            )
        if self.encode_format not in ENCODE_FORMATS:
            raise ValueError(
                f"encode format {self.encode_format!r} is not one of {', '.join(ENCODE_FORMATS)}"
            )
        if self.image_size < 1:
            raise ValueError("image size must be positive")


@dataclass(frozen=True)
class DecodedImage:
    data: bytes
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int
    pixel_hash: str | None = None  # of the image as written (schemas.imagehash)
    phash: str | None = None
    dhash: str | None = None


def target_size(width: int, height: int, cfg: ImageConfig) -> tuple[int, int]:
    """Size of the image after the resize step, before any crop or border."""
    if cfg.resize_mode == "no":
        return width, height
    small, large = min(width, height), max(width, height)
    side = large if cfg.resize_mode in ("keep_ratio_largest", "border") else small
    scale = cfg.image_size / side
    if cfg.resize_only_if_bigger and scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _orientation_swaps_axes(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")  # 16-bit -> 8-bit, not clipped to white
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, F


def _encode(im: Image.Image, cfg: ImageConfig) -> bytes:
    buf = io.BytesIO()
    fmt = ENCODE_FORMATS[cfg.encode_format]
    if fmt == "JPEG":
        im.save(buf, fmt, quality=cfg.encode_quality, optimize=False)
    elif fmt == "WEBP":
        im.save(buf, fmt, quality=cfg.encode_quality, method=4)
    else:
        im.save(buf, fmt, compress_level=6)
    return buf.getvalue()


def decode_and_resize(data: bytes, cfg: ImageConfig) -> DecodedImage:
    """Decode, orient, convert to RGB and resize; raises ImageError with a Reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: we check ourselves
            im = Image.open(io.BytesIO(data))
            if im.width * im.height > cfg.max_pixels:
                raise ImageError(
                    Reason.TOO_MANY_PIXELS,
                    f"{im.width}x{im.height} exceeds {cfg.max_pixels} pixels",
                )
            source_format = im.format
            swaps = _orientation_swaps_axes(im)
            ow, oh = (im.height, im.width) if swaps else (im.width, im.height)
            filtered = _filter_reason(ow, oh, cfg)
            if filtered:
                raise ImageError(filtered[0], filtered[1], status=Status.FILTERED)
            tw, th = target_size(ow, oh, cfg)
            if (
                cfg.resize_mode == "no"
                and source_format == ENCODE_FORMATS[cfg.encode_format]
                and not swaps
            ) and (im.mode == "RGB" or (source_format == "JPEG" and im.mode == "L")):
                im.load()  # reject truncated files even when the bytes are kept
                rgb = _to_rgb(im, cfg.background)
                return DecodedImage(data, cfg.encode_format, ow, oh, ow, oh, *image_hashes(rgb))
            if source_format == "JPEG" and (tw, th) != (ow, oh):
                # Decode at the smallest power-of-two scale that still covers the target.
                im.draft("RGB", (th, tw) if swaps else (tw, th))
            im.load()
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im, cfg.background)
            im = _resize(im, tw, th, cfg)
            return DecodedImage(
                _encode(im, cfg),
                cfg.encode_format,
                im.width,
                im.height,
                ow,
                oh,
                *image_hashes(im),
            )
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(Reason.TOO_MANY_PIXELS, str(e)) from None
    except DECODE_ERRORS as e:
        raise ImageError(Reason.DECODE, f"{type(e).__name__}: {e}") from None


def _filter_reason(width: int, height: int, cfg: ImageConfig) -> tuple[str, str] | None:
    if min(width, height) < cfg.min_image_size:
        return Reason.TOO_SMALL, f"{width}x{height} is smaller than {cfg.min_image_size}"
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > cfg.max_aspect_ratio:
        return Reason.ASPECT_RATIO, f"aspect ratio {ratio:.2f} exceeds {cfg.max_aspect_ratio}"
    return None


def _resize(im: Image.Image, tw: int, th: int, cfg: ImageConfig) -> Image.Image:
    if im.size != (tw, th):
        # reducing_gap: box-reduce by an integer factor first, then bicubic (measured: 13 % less
        # CPU than Lanczos for 0.4 dB, bench/RESULTS.md).
        im = im.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    s = cfg.image_size
    if cfg.resize_mode == "center_crop" and (im.width > s or im.height > s):
        left, top = (im.width - min(s, im.width)) // 2, (im.height - min(s, im.height)) // 2
        im = im.crop((left, top, left + min(s, im.width), top + min(s, im.height)))
    elif cfg.resize_mode == "border" and (im.width, im.height) != (s, s):
        canvas = Image.new("RGB", (max(s, im.width), max(s, im.height)), (0, 0, 0))
        canvas.paste(im, ((canvas.width - im.width) // 2, (canvas.height - im.height) // 2))
        im = canvas
    return im


def decode_row(row: dict, cfg: ImageConfig) -> dict:
    """A downloaded row -> the row with the encoded image in `_image`, or failed/filtered."""
    data = row.pop("_data")
    try:
        out = decode_and_resize(data, cfg)
    except ImageError as e:
        row.update(status=e.status, reason=e.reason, error=str(e))
        return row
    row.update(
        original_width=out.original_width,
        original_height=out.original_height,
        width=out.width,
        height=out.height,
        pixel_hash=out.pixel_hash,
        phash=out.phash,
        dhash=out.dhash,
    )
    row["_image"] = out.data
    row["_ext"] = out.ext
    return row


def decode_rows(rows: list[dict], cfg: ImageConfig) -> list[dict]:
    """decode_row on a batch of rows: what a decode worker process runs."""
    return [decode_row(row, cfg) for row in rows]
