"""Decode and augment images with Pillow and torch only (no torchvision).

Loader workers hand over uint8 tensors (4x less to copy between processes than float);
`normalize` turns a batch into the model's input on the training device.

    image = decode_image(data, min_side=224)
    x = random_resized_crop(image, 224, scale=(0.9, 1.0), rng=random.Random(seed))  # (3, 224, 224) uint8
    x = resize_center_crop(image, 224)                                            # eval
    pixels = normalize(torch.stack([x]))                                          # (1, 3, 224, 224) float
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image

# CLIP's (OpenAI) normalization constants, RGB.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """Fully decoded RGB image; raises on truncated or invalid data.

    JPEGs are decoded at the smallest DCT scale that keeps both sides >= `min_side`.
    """
    image = Image.open(io.BytesIO(data))
    if min_side and image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))
    image.load()  # decode now, so corrupt data fails here
    if image.mode != "RGB":
        image = image.convert("RGBA" if "transparency" in image.info else image.mode)
        image = image.convert("RGB")
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 (3, H, W)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> tuple[int, int, int, int]:
    """Random crop (left, top, right, bottom) covering `scale` of the area at aspect `ratio`
    (the Inception / torchvision RandomResizedCrop recipe, 10 tries then a center crop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def random_resized_crop(
    image: Image.Image,
    size: int,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    rng: random.Random | None = None,
) -> torch.Tensor:
    """Training view: a random crop resized to (size, size); uint8 (3, size, size)."""
    box = crop_box(image.width, image.height, scale, ratio, rng or random.Random())
    return to_tensor(_resize(image, size, box))


def resize_center_crop(image: Image.Image, size: int) -> torch.Tensor:
    """Evaluation view: shorter side to `size`, center square; uint8 (3, size, size)."""
    side = min(image.width, image.height)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return to_tensor(_resize(image, size, (left, top, left + side, top + side)))


def _resize(image: Image.Image, size: int, box: tuple[int, int, int, int]) -> Image.Image:
    # reducing_gap: shrink by an integer factor first when the crop is > 3x the output, then
    # bicubic; much faster on large web images and indistinguishable at this ratio
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> `dtype` (B, 3, H, W) with CLIP mean/std, on the images' device."""
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return (images.to(dtype) / 255.0 - mean) / std
