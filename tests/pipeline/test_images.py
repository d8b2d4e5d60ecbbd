"""Decoding and resizing on real photos: geometry per mode, orientation, colour modes, caps."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.crawl.images import (
    ImageConfig,
    ImageError,
    decode_and_resize,
    sniff_mime,
    target_size,
)
from tests.conftest import encode


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("keep_ratio", (800, 600), (341, 256)),
        ("keep_ratio", (600, 800), (256, 341)),
        ("keep_ratio_largest", (800, 600), (256, 192)),
        ("center_crop", (800, 600), (341, 256)),  # before the crop
        ("border", (800, 600), (256, 192)),  # before the border
        ("no", (800, 600), (800, 600)),
        ("keep_ratio", (100, 50), (512, 256)),  # upscales unless resize_only_if_bigger
    ],
)
def test_target_size(mode, size, expected):
    assert target_size(*size, ImageConfig(image_size=256, resize_mode=mode)) == expected


def test_resize_only_if_bigger_never_upscales():
    assert target_size(100, 50, ImageConfig(image_size=256, resize_only_if_bigger=True)) == (
        100,
        50,
    )


@pytest.fixture(scope="module")
def coffee_jpeg(photos):
    return encode(photos["coffee"].convert("RGB"), "JPEG", quality=92)  # 600x400


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("keep_ratio", (192, 128)),
        ("keep_ratio_largest", (128, 85)),
        ("center_crop", (128, 128)),
        ("border", (128, 128)),
        ("no", (600, 400)),
    ],
)
def test_decode_and_resize_modes(coffee_jpeg, mode, expected):
    out = decode_and_resize(coffee_jpeg, ImageConfig(image_size=128, resize_mode=mode))
    im = Image.open(io.BytesIO(out.data))
    assert im.format == "JPEG" and im.mode == "RGB"
    assert im.size == (out.width, out.height) == expected
    assert (out.original_width, out.original_height) == (600, 400)


def test_no_resize_keeps_original_jpeg_bytes(coffee_jpeg):
    out = decode_and_resize(coffee_jpeg, ImageConfig(resize_mode="no"))
    assert out.data == coffee_jpeg


def test_border_pads_with_black_bars(coffee_jpeg):
    out = decode_and_resize(
        coffee_jpeg, ImageConfig(image_size=128, resize_mode="border", encode_format="png")
    )
    px = np.asarray(Image.open(io.BytesIO(out.data)))
    assert px[:10].max() == 0 and px[-10:].max() == 0  # 85 px tall image centred in 128
    assert px[64].mean() > 30


def test_reduced_scale_jpeg_decode_matches_full_decode(photos):
    big = photos["astronaut"].convert("RGB").resize((1600, 1600), Image.LANCZOS)
    data = encode(big, "JPEG", quality=95)
    fast = decode_and_resize(data, ImageConfig(image_size=200, encode_format="png"))
    reference = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((200, 200), Image.LANCZOS), dtype=float
    )
    got = np.asarray(Image.open(io.BytesIO(fast.data)), dtype=float)
    psnr = 10 * np.log10(255**2 / np.mean((got - reference) ** 2))
    assert psnr > 30


def _with_orientation(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


def test_exif_orientation_is_applied(photos):
    im = photos["rocket"].convert("RGB")  # 640x427 landscape
    stored = im.transpose(
        Image.Transpose.ROTATE_270
    )  # stored portrait; orientation 8 turns it back
    data = _with_orientation(stored, 8)
    out = decode_and_resize(data, ImageConfig(image_size=100, resize_mode="keep_ratio"))
    assert (out.original_width, out.original_height) == im.size
    assert (out.width, out.height) == (150, 100)
    got = np.asarray(Image.open(io.BytesIO(out.data)).convert("L"), dtype=float)
    want = np.asarray(im.convert("L").resize((150, 100), Image.LANCZOS), dtype=float)
    assert np.abs(got - want).mean() < 12  # upright, not rotated


@pytest.mark.parametrize(
    "kind", ["cmyk_jpeg", "palette_transparent_png", "rgba_png", "gray_png", "16bit_png", "gif"]
)
def test_colour_modes_become_rgb(photos, kind):
    rgb = photos["chelsea"].convert("RGB").resize((200, 133))
    if kind == "cmyk_jpeg":
        data = encode(rgb.convert("CMYK"), "JPEG")
    elif kind == "palette_transparent_png":
        p = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
        p.info["transparency"] = 0
        data = encode(p, "PNG", transparency=0)
    elif kind == "rgba_png":
        rgba = rgb.copy()
        rgba.putalpha(128)
        data = encode(rgba, "PNG")
    elif kind == "gray_png":
        data = encode(rgb.convert("L"), "PNG")
    elif kind == "16bit_png":
        arr = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        data = encode(Image.fromarray(arr), "PNG")
    else:
        data = encode(rgb.convert("P"), "GIF")
    out = decode_and_resize(data, ImageConfig(image_size=64, encode_format="png"))
    im = Image.open(io.BytesIO(out.data))
    assert im.mode == "RGB" and min(im.size) == 64
    if kind == "16bit_png":  # scaled to 8 bits, not clipped to white
        assert 40 < np.asarray(im).mean() < 215


def test_pixel_cap_is_checked_before_decoding(photos):
    data = encode(photos["coffee"].convert("RGB"), "PNG")
    with pytest.raises(ImageError) as e:
        decode_and_resize(data, ImageConfig(max_pixels=1000))
    assert e.value.reason == "too_many_pixels"


def test_truncated_and_garbage_bytes_fail_as_decode(coffee_jpeg):
    for data in (coffee_jpeg[: len(coffee_jpeg) // 2], b"\xff\xd8\xff" + b"junk" * 100):
        with pytest.raises(ImageError) as e:
            decode_and_resize(data, ImageConfig())
        assert e.value.reason == "decode"


def test_size_and_aspect_filters(coffee_jpeg):
    with pytest.raises(ImageError) as e:
        decode_and_resize(coffee_jpeg, ImageConfig(min_image_size=500))
    assert (e.value.status, e.value.reason) == ("filtered", "too_small")
    with pytest.raises(ImageError) as e:
        decode_and_resize(coffee_jpeg, ImageConfig(max_aspect_ratio=1.2))
    assert (e.value.status, e.value.reason) == ("filtered", "aspect_ratio")


def test_webp_output(coffee_jpeg):
    out = decode_and_resize(coffee_jpeg, ImageConfig(image_size=64, encode_format="webp"))
    assert out.ext == "webp" and Image.open(io.BytesIO(out.data)).format == "WEBP"


def test_sniff_mime(coffee_jpeg, photos):
    assert sniff_mime(coffee_jpeg) == "image/jpeg"
    assert sniff_mime(encode(photos["coffee"], "PNG")) == "image/png"
    assert sniff_mime(encode(photos["coffee"], "WEBP")) == "image/webp"
    assert sniff_mime(b"<!doctype html><html>") is None
