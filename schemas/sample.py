"""The tar key contract: how a sample is laid out inside a WebDataset shard.

A sample is the tar members `KEY.<image ext>`, `KEY.txt` (caption, UTF-8) and `KEY.json`
(the result row), which is exactly what img2dataset writes and what webdataset/OpenCLIP read.

    key_for_url("https://example.com/a.jpg")  # -> '3f1c0a9e5b7d2c4e6a8b0d1f' (24 hex digits)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

# 96 bits: a collision among 5e9 keys has probability ~ n^2 / 2^97 ~ 1e-10.
KEY_LENGTH = 24
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt",)
META_EXTENSIONS = ("json",)


def key_for_url(normalized_url: str) -> str:
    """Stable sample key derived from the normalized URL (fixed width, no dots)."""
    return hashlib.sha256(normalized_url.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def split_member_name(name: str) -> tuple[str, str]:
    """`dir/KEY.ext.more` -> ("dir/KEY", "ext.more"), webdataset's split at the first dot of the basename."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


@dataclass(frozen=True)
class TarMember:
    name: str
    data: bytes


def sample_to_members(
    key: str, image: bytes, image_ext: str, caption: str | None, row: dict
) -> list[TarMember]:
    """The members of one sample, in the order webdataset expects them to be adjacent."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key must not contain '.' or '/': {key!r}")
    meta = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return [
        TarMember(f"{key}.{image_ext}", image),
        TarMember(f"{key}.json", meta.encode("utf-8")),
        TarMember(f"{key}.txt", (caption or "").encode("utf-8")),
    ]
