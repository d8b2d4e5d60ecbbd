"""How far apart pHash and dHash put copies of one photo, and unrelated photos: the evidence
behind NearDedupe's default thresholds (`threshold`, `verify_threshold`).

    .venv/bin/python bench/near_hashes.py [--image-size 128] [--tiles 6]

Copies: the planted variants of tests/pipeline/test_curation.py (re-encoded, resized 50-200 %,
cropped 5 % a side, brightness +-20 %) of 14 real photos, each decoded and resized as the
pipeline does. Unrelated: every pair of distinct images among those photos, the other photos
shipped in scikit-image / scikit-learn, and tiles cut from different places of them (look-alikes
with the same statistics), plus the 1,797 scikit-learn digits (very alike, all distinct).
Prints, per distance d, how many copy pairs and unrelated pairs sit at d under each hash, and
for each (pHash t, dHash t2) the share of copy pairs kept and the share of unrelated pairs
passing both, which multiplied by N is the number of false partners per row at N rows.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.images import ImageConfig, decode_and_resize  # noqa: E402
from schemas.imagehash import hamming  # noqa: E402
from tests.conftest import _photo_paths, encode  # noqa: E402
from tests.pipeline.test_curation import BASES, _skimage, _variants  # noqa: E402


def hashes(body: bytes, cfg: ImageConfig) -> tuple[str, str]:
    out = decode_and_resize(body, cfg)  # the hashes of the image as the pipeline writes it
    return out.phash, out.dhash


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument(
        "--tiles", type=int, default=6, help="non-overlapping tiles per photo side (look-alikes)"
    )
    args = ap.parse_args(argv)
    cfg = ImageConfig(image_size=args.image_size)
    photos = {}
    for path in _photo_paths():
        with Image.open(path) as im:
            photos[path.stem] = im.convert("RGB")
    copies = []  # (variant, dp, dd)
    originals = {}
    for name in BASES:
        im = photos[name] if name in photos else _skimage(name)
        scale = 320 / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        hs = {v: hashes(body, cfg) for v, body, _ in _variants(im)}
        originals[name] = hs["orig"]
        for v, (p, d) in hs.items():
            if v != "orig":
                copies.append((v, hamming(p, hs["orig"][0]), hamming(d, hs["orig"][1])))
    distinct = dict(originals)
    for name, im in photos.items():
        if name not in distinct:
            distinct[name] = hashes(encode(im, "JPEG", quality=90), cfg)
    n = args.tiles
    for name, im in photos.items():
        w, h = im.size
        for i, j in itertools.product(range(n), range(n)):
            tile = im.crop((i * w // n, j * h // n, (i + 1) * w // n, (j + 1) * h // n))
            if min(tile.size) >= 16:
                distinct[f"{name}-{i}-{j}"] = hashes(encode(tile, "JPEG", quality=90), cfg)
    from sklearn.datasets import load_digits

    for k, digit in enumerate(load_digits().images):
        im = Image.fromarray(np.uint8(digit * 15)).resize((64, 64), Image.NEAREST)
        distinct[f"digit-{k}"] = hashes(encode(im.convert("RGB"), "PNG"), cfg)
    keys = sorted(distinct)
    p = np.array([int(distinct[k][0], 16) for k in keys], dtype=np.uint64)
    d = np.array([int(distinct[k][1], 16) for k in keys], dtype=np.uint64)
    iu = np.triu_indices(len(keys), 1)
    up = np.bitwise_count(p[:, None] ^ p[None, :])[iu]
    ud = np.bitwise_count(d[:, None] ^ d[None, :])[iu]
    cp = np.array([c[1] for c in copies])
    cd = np.array([c[2] for c in copies])
    print(f"{len(copies)} copy pairs, {len(keys)} distinct images, {len(up)} unrelated pairs")
    print("\nworst copies (variant, pHash d, dHash d):")
    for v, a, b in sorted(copies, key=lambda c: -(c[1] + c[2]))[:8]:
        print(f"  {v:10s} {a:3d} {b:3d}")
    print("\nd | copies pHash<=d dHash<=d | unrelated pHash<=d dHash<=d both<=d")
    for t in range(0, 21, 2):
        print(
            f"{t:2d} | {np.mean(cp <= t):.3f} {np.mean(cd <= t):.3f} | "
            f"{np.mean(up <= t):.2e} {np.mean(ud <= t):.2e} {np.mean((up <= t) & (ud <= t)):.2e}"
        )
    is_digit = np.array([k.startswith("digit-") for k in keys])
    photo_pair = ~is_digit[iu[0]] & ~is_digit[iu[1]]
    digit_pair = is_digit[iu[0]] & is_digit[iu[1]]
    print("\nunrelated pairs within d, by kind: photos/tiles | digits (pHash, dHash, both)")
    for t in (4, 6, 8, 10, 12):
        row = []
        for sel in (photo_pair, digit_pair):
            a, b = up[sel] <= t, ud[sel] <= t
            row.append(f"{a.mean():.2e} {b.mean():.2e} {(a & b).mean():.2e}")
        print(f"{t:2d} | {photo_pair.sum()} photo pairs: {row[0]} | digits: {row[1]}")
    print(
        "\n(pHash t, dHash t2): copies kept | unrelated passing both (pHash alone) | "
        "photo/tile pairs passing both (pHash alone)"
    )
    for t, t2 in itertools.product((8, 10, 12), (8, 10, 12, 14, 16)):
        both = (up <= t) & (ud <= t2)
        print(
            f"  ({t:2d}, {t2:2d}): {np.mean((cp <= t) & (cd <= t2)):.3f} | {both.mean():.2e} "
            f"({np.mean(up <= t):.2e}) | {both[photo_pair].mean():.2e} "
            f"({np.mean(up[photo_pair] <= t):.2e})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
