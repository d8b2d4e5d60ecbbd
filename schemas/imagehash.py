"""Image hashes shared by curation (dedupe) and evaluation (decontamination).

    phash(image)         -> 16 hex digits: 64-bit DCT perceptual hash (robust to resize, re-encode)
    pixel_hash(image)    -> 32 hex digits: identical decoded pixels <=> identical hash
    hamming(a, b)        -> number of differing bits between two phashes

Pure numpy + Pillow; imports neither Beam nor torch.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

PHASH_BITS = 64
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


def phash_bits(image: Image.Image) -> np.ndarray:
    """64 booleans: low-frequency DCT coefficients above their median."""
    gray = image.convert("L").resize((_IMG_SIZE, _IMG_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float64)
    c = _dct_matrix()
    dct = c @ pixels @ c.T  # (32, 32)
    low = dct[:_HASH_SIZE, :_HASH_SIZE].ravel()  # (64,)
    return low > np.median(low)


def phash(image: Image.Image) -> str:
    bits = phash_bits(image)
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return f"{value:016x}"


def pixel_hash(image: Image.Image) -> str:
    im = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256(f"{im.width}x{im.height}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()[:32]


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def phash_bands(h: str, bands: int) -> list[tuple[int, int]]:
    """Split a 64-bit phash into `bands` contiguous bit ranges: [(band index, band value)].

    Two hashes within Hamming distance < bands share at least one band exactly (pigeonhole).
    """
    value = int(h, 16)
    out = []
    for i in range(bands):
        lo = i * PHASH_BITS // bands
        hi = (i + 1) * PHASH_BITS // bands
        out.append((i, (value >> lo) & ((1 << (hi - lo)) - 1)))
    return out


def hamming_matrix(hashes: list[str]) -> np.ndarray:
    """(n, n) pairwise Hamming distances of hex phashes, vectorised."""
    ints = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    x = ints[:, None] ^ ints[None, :]  # (n, n) uint64
    bytes_ = x.view(np.uint8).reshape(len(hashes), len(hashes), 8)
    return np.unpackbits(bytes_, axis=-1).sum(axis=-1, dtype=np.int32)
