"""Image hashes shared by curation (dedupe) and evaluation (decontamination).

    phash(image)         -> 16 hex digits: 64-bit DCT perceptual hash (robust to resize, re-encode)
    dhash(image)         -> 16 hex digits: 64-bit difference hash, near dedupe's second opinion
    pixel_hash(image)    -> 32 hex digits: identical decoded pixels <=> identical hash
    image_hashes(image)  -> (pixel_hash, phash, dhash), the grey image made once
    hamming(a, b)        -> number of differing bits between two phashes
    hamming_matrix(hs)   -> (n, n) of those, by XOR + popcount

Pure numpy + Pillow; imports neither Beam nor torch.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import numpy as np
from PIL import Image

# What decoding a corrupt, truncated or hostile image can raise in Pillow (a counted skip or
# failure wherever images are decoded: crawling, decontamination, training, scoring).
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)
_HASH_SIZE = 8  # 8x8 low-frequency DCT block
_IMG_SIZE = 32  # image is reduced to 32x32 before the DCT


@lru_cache(maxsize=1)
def _dct_matrix(n: int = _IMG_SIZE) -> np.ndarray:
    # Orthonormal DCT-II basis: C @ x @ C.T is the 2-D DCT of x.
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    c[0] /= np.sqrt(2)
    return c


def _gray(image: Image.Image) -> Image.Image:
    return image if image.mode == "L" else image.convert("L")


def image_hashes(image: Image.Image) -> tuple[str, str, str]:
    """(pixel_hash, phash, dhash) of an RGB image, its grey version made once for both
    perceptual hashes (the same values as each function's own)."""
    gray = image.convert("L")
    return pixel_hash(image), phash(gray), dhash(gray)


def phash_bits(image: Image.Image) -> np.ndarray:
    """64 booleans: low-frequency DCT coefficients above their median."""
    gray = _gray(image).resize((_IMG_SIZE, _IMG_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float64)
    c = _dct_matrix()
    dct = c @ pixels @ c.T  # (32, 32)
    low = dct[:_HASH_SIZE, :_HASH_SIZE].ravel()  # (64,)
    return low > np.median(low)


def phash(image: Image.Image) -> str:
    return _hex(phash_bits(image))


def _hex(bits: np.ndarray) -> str:
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return f"{value:016x}"


def dhash(image: Image.Image) -> str:
    """64-bit difference hash: is each pixel of a 9x8 grey thumbnail brighter than its left
    neighbour. Built from horizontal gradients rather than DCT coefficients, so for unrelated
    images it errs independently of `phash`: NearDedupe requires both to agree."""
    gray = _gray(image).resize((_HASH_SIZE + 1, _HASH_SIZE), Image.Resampling.BOX)
    px = np.asarray(gray, dtype=np.int16)  # (8, 9)
    return _hex((px[:, 1:] > px[:, :-1]).ravel())


def pixel_hash(image: Image.Image) -> str:
    im = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256(f"{im.width}x{im.height}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()[:32]


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


# Set bits of each 16-bit value: the popcount fallback for numpy < 2 (no np.bitwise_count).
# Built from the 256-entry byte table; 64 KB, so it stays in cache, and four lookups per
# uint64 are ~4x faster than eight byte lookups.
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_U16_POPCOUNT = (_BYTE_POPCOUNT[:, None] + _BYTE_POPCOUNT[None, :]).reshape(-1)  # (65536,)
_BLOCK = 1 << 21  # XOR values per block: 16 MB of uint64 at a time, whatever n is


def popcount64(x: np.ndarray, use_bitwise_count: bool | None = None) -> np.ndarray:
    """Set bits of each uint64 in `x` -> uint8 of the same shape. np.bitwise_count on numpy >= 2,
    else a table lookup per 16-bit plane (never 64 unpacked bits per value)."""
    if use_bitwise_count is None:
        use_bitwise_count = hasattr(np, "bitwise_count")
    if use_bitwise_count:
        return np.bitwise_count(x)
    planes = np.ascontiguousarray(x, dtype=np.uint64).view(np.uint16).reshape(*x.shape, 4)
    out = _U16_POPCOUNT.take(planes[..., 0])
    for b in range(1, 4):
        out += _U16_POPCOUNT.take(planes[..., b])
    return out


def hamming_matrix(hashes: list[str], use_bitwise_count: bool | None = None) -> np.ndarray:
    """(n, n) uint8 pairwise Hamming distances of hex phashes: XOR + popcount, in row blocks
    through one 16 MB uint64 buffer (a 4096-row chunk: 16 MB out, ~34 MB peak)."""
    ints = np.array([int(h, 16) for h in hashes], dtype=np.uint64)  # (n,)
    return hamming_matrix_ints(ints, use_bitwise_count)


def hamming_matrix_ints(ints: np.ndarray, use_bitwise_count: bool | None = None) -> np.ndarray:
    """`hamming_matrix` of hashes already held as (n,) uint64."""
    n = len(ints)
    out = np.empty((n, n), dtype=np.uint8)
    rows = max(1, min(n, _BLOCK // max(n, 1)))
    xor = np.empty((rows, n), dtype=np.uint64)
    for start in range(0, n, rows):
        x = xor[: min(rows, n - start)]  # (rows, n)
        np.bitwise_xor(ints[start : start + rows, None], ints[None, :], out=x)
        out[start : start + rows] = popcount64(x, use_bitwise_count)
    return out
