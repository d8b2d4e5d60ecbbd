"""Hamming distances of phashes: the popcount matrix agrees with bit unpacking, both paths."""

import numpy as np
import pytest

from schemas import imagehash
from schemas.imagehash import hamming, hamming_matrix, popcount64


def unpacked_hamming_matrix(hashes: list[str]) -> np.ndarray:
    """The previous implementation: XOR, then 64 unpacked bits per pair."""
    ints = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    x = ints[:, None] ^ ints[None, :]
    bytes_ = x.view(np.uint8).reshape(len(hashes), len(hashes), 8)
    return np.unpackbits(bytes_, axis=-1).sum(axis=-1, dtype=np.int32)


def random_hashes(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    near = values[: n // 2] ^ (np.uint64(1) << rng.integers(0, 64, size=n // 2, dtype=np.uint64))
    edges = np.array([0, 2**64 - 1, 2**63, 1], dtype=np.uint64)  # all bits, top bit, low bit
    return [f"{int(v):016x}" for v in np.concatenate([values, near, edges])]


@pytest.mark.parametrize("use_bitwise_count", [None, False])
def test_hamming_matrix_matches_unpacked_bits(use_bitwise_count):
    hashes = random_hashes(301)
    got = hamming_matrix(hashes, use_bitwise_count=use_bitwise_count)
    assert got.shape == (len(hashes), len(hashes))
    np.testing.assert_array_equal(got, unpacked_hamming_matrix(hashes))
    assert got[-4, -3] == 64 and got[-4, -1] == 1 and got[-3, -2] == 63


def test_hamming_matrix_row_blocks_cover_every_row(monkeypatch):
    hashes = random_hashes(97, seed=1)
    monkeypatch.setattr(imagehash, "_BLOCK", 7 * len(hashes) - 5)  # 6 rows a block, a ragged end
    for use_bitwise_count in (None, False):
        np.testing.assert_array_equal(
            hamming_matrix(hashes, use_bitwise_count), unpacked_hamming_matrix(hashes)
        )


def test_popcount_table_fallback_equals_bitwise_count_and_scalar_hamming():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2**64, size=(5, 9), dtype=np.uint64)
    table = popcount64(x, use_bitwise_count=False)
    assert table.dtype == np.uint8 and table.shape == x.shape
    want = [[int(v).bit_count() for v in row] for row in x.tolist()]
    np.testing.assert_array_equal(table, want)
    if hasattr(np, "bitwise_count"):
        np.testing.assert_array_equal(popcount64(x, use_bitwise_count=True), want)
    a, b = random_hashes(2, seed=3)[:2]
    assert hamming_matrix([a, b])[0, 1] == hamming(a, b)


def test_hamming_matrix_of_nothing_and_one():
    assert hamming_matrix([]).shape == (0, 0)
    assert hamming_matrix(["ffffffffffffffff"]).tolist() == [[0]]


def test_dhash_survives_resize_and_reencode_and_tells_photos_apart(photos):
    import io

    from PIL import Image

    from schemas.imagehash import dhash

    names = sorted(photos)[:8]
    hashes = {}
    for name in names:
        im = photos[name].convert("RGB")
        buf = io.BytesIO()
        im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(buf, "JPEG", quality=60)
        small = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        hashes[name] = dhash(im)
        assert len(hashes[name]) == 16
        assert hamming(hashes[name], dhash(small)) <= 8, name
    apart = [hamming(hashes[a], hashes[b]) for a in names for b in names if a < b]
    assert min(apart) > 12


def _noise_image(seed: int, mode: str = "RGB"):
    from PIL import Image

    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")
    return im.resize((256, 192)).convert(mode)


def test_image_hashes_are_each_hashs_own_values():
    # pinned: what pixel_hash, phash and dhash gave before image_hashes shared the grey image
    assert imagehash.image_hashes(_noise_image(7)) == (
        "618a8cf068448833b51c5b779fada8df",
        "9ffe797d2462a004",
        "0a35a96e5453545a",
    )
    for seed in range(5):
        im = _noise_image(seed)
        assert imagehash.image_hashes(im) == (
            imagehash.pixel_hash(im),
            imagehash.phash(im),
            imagehash.dhash(im),
        )
        grey = im.convert("L")  # a grey image hashes as its RGB self would
        assert (imagehash.phash(grey), imagehash.dhash(grey)) == imagehash.image_hashes(im)[1:]
