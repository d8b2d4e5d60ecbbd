"""The tar key contract: how a sample is laid out inside a WebDataset shard.

A sample is the tar members `KEY.<image ext>`, `KEY.txt` (caption, UTF-8) and `KEY.json`
(the result row), which is exactly what img2dataset writes and what webdataset/OpenCLIP read.

    key_for_url("https://example.com/a.jpg")  # -> '3f1c0a9e5b7d2c4e6a8b0d1f' (24 hex digits)
    with open("shards/00000.tar", "rb") as f:
        for sample in group_samples(tar_members(f)):   # {"__key__": KEY, "jpg": b..., "txt": b...}
            image = sample[image_extension(sample)]

The pipeline (reading existing datasets, resharding) and the trainer read tars with these same
functions, so both group members into samples and find a sample's image the same way.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO

# 96 bits: a collision among 5e9 keys has probability ~ n^2 / 2^97 ~ 1e-10.
KEY_LENGTH = 24
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


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


def tar_members(fileobj: IO[bytes]) -> Generator[tuple[str, bytes], None, int | None]:
    """(name, bytes) of each regular file of a tar, streamed in tar order. Member headers are
    not kept (tarfile would hold every one of them), so a shard of any size streams in
    constant memory. Raises tarfile.TarError / OSError / EOFError on a corrupt or truncated tar.

    Returns (`end = yield from tar_members(f)`) the byte offset where an uncompressed tar's
    members end, None for a compressed one: tarfile ends quietly at a header it cannot read,
    so a caller that can seek checks that a zero block (the real end) is there."""
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for info in tar:
            if info.isreg():
                data = tar.extractfile(info).read()
                tar.members = []
                yield info.name, data
        plain = getattr(tar.fileobj, "comptype", None) == "tar"
        return tar.offset if plain else None


def group_samples(members: Iterable[tuple[str, bytes]]) -> Iterator[dict]:
    """(name, bytes) in tar order -> samples `{"__key__": KEY, ext: bytes}`, webdataset's rule:
    consecutive members sharing a key (`split_member_name`) form one sample; extensions are
    lower-cased; members without an extension and webdataset's `__*__` metadata are skipped.
    A sample is yielded once the next key starts (or the tar ends), never half-read."""
    current: dict | None = None
    for name, data in members:
        key, ext = split_member_name(name)
        if not ext or posixpath.basename(name).startswith("__"):
            continue
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext.lower()] = data
    if current is not None:
        yield current


def image_extension(sample: Mapping[str, object]) -> str | None:
    """The extension under which a sample holds its image: the first of IMAGE_EXTENSIONS that is
    a member (`jpg` before `png`), else the first member whose last part is one (`0.jpg`)."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return ext
    return next((e for e in sample if e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
