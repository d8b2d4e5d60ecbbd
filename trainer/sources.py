"""Where shards come from: brace patterns, globs, a pipeline manifest.json, URLs; and opening one.

A `--data` value is one of
    shards/{00000..00127}.tar          brace pattern (webdataset's), local or URL
    'shards/*.tar'                      glob (local, or any fsspec filesystem: gs://b/s/*.tar)
    out/manifest.json                   the pipeline's manifest: shard list with sample counts
    pipe:curl -s https://host/{0..9}.tar   a shell command writing the tar to stdout
Several values are several sources; with mixing weights they are drawn from in that proportion.

    shards = resolve_sources(["out/manifest.json", "extra/{0..3}.tar"])
    with open_shard(shards[0].url) as f: ...
"""

from __future__ import annotations

import glob
import json
import logging
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import braceexpand
import fsspec
from webdataset.gopen import gopen

from schemas import Manifest, ManifestError
from schemas.sample import group_samples, tar_members
from trainer.configs import UserError

log = logging.getLogger(__name__)


# What reading a broken shard raises: truncated or invalid tar, failed download or pipe.
SHARD_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error, ValueError)


class DataError(UserError):
    """The data cannot feed training: no shards, wrong layout, too many corrupt samples."""


@dataclass(frozen=True)
class Shard:
    url: str  # local path, fsspec URL or pipe: command
    nsamples: int | None = None  # known from a manifest, else None
    source: int = 0  # index of the `--data` value it came from


def resolve_sources(specs: list[str]) -> list[Shard]:
    """Every shard of every source, in a stable order (sorted within a glob)."""
    if not specs:
        raise DataError("no --data given")
    shards: list[Shard] = []
    for source, spec in enumerate(specs):
        found = _resolve_one(spec, source)
        if not found:
            raise DataError(f"--data {spec!r} matches no shards")
        shards.extend(found)
    return shards


def _resolve_one(spec: str, source: int) -> list[Shard]:
    if spec.endswith(".json") and not spec.startswith("pipe:"):
        return _from_manifest(spec, source)
    urls = list(braceexpand.braceexpand(spec))
    if spec.startswith("pipe:"):
        return [Shard(u, source=source) for u in urls]
    shards = []
    for url in urls:
        if glob.has_magic(url):
            shards.extend(Shard(u, source=source) for u in _glob(url))
        else:
            if _is_local(url) and not os.path.exists(_local_path(url)):
                raise DataError(f"shard {url} does not exist")
            shards.append(Shard(url, source=source))
    return shards


def _glob(pattern: str) -> list[str]:
    if _is_local(pattern):
        return sorted(glob.glob(_local_path(pattern)))
    fs, _, paths = fsspec.get_fs_token_paths(pattern)
    return sorted(fs.unstrip_protocol(p) for p in paths)


def _from_manifest(path: str, source: int) -> list[Shard]:
    try:
        with fsspec.open(path, "rt") as f:
            manifest = Manifest.from_json(f.read())
    except FileNotFoundError:
        raise DataError(f"manifest {path} does not exist") from None
    except ManifestError as e:
        raise DataError(f"{path}: {e}") from None
    base = _dirname(path)
    return [
        Shard(_join(base, entry.url), nsamples=entry.nsamples, source=source)
        for entry in manifest.shardlist
    ]


def _is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


def _local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file://") else url


def _dirname(path: str) -> str:
    return os.path.dirname(path) if _is_local(path) else posixpath.dirname(path)


def _join(base: str, url: str) -> str:
    if urlparse(url).scheme or os.path.isabs(url):
        return url  # already absolute
    return os.path.join(base, url) if _is_local(base) else posixpath.join(base, url)


def total_samples(shards: list[Shard]) -> int | None:
    """Samples in one epoch over `shards`, when every shard's count is known: from a
    manifest, or from the sizes.json beside local shards (OpenCLIP's count file, which
    `webpairs curate` writes too). Only reported: reading never stops at a sizes.json count."""
    sizes: dict[str, dict] = {}
    total = 0
    for shard in shards:
        n = shard.nsamples
        folder = _dirname(shard.url)
        if n is None and _is_local(shard.url):
            if folder not in sizes:
                try:
                    with open(os.path.join(_local_path(folder), "sizes.json")) as f:
                        sizes[folder] = json.load(f)
                except (OSError, ValueError):
                    sizes[folder] = {}
            n = sizes[folder].get(os.path.basename(shard.url))
        if n is None:
            return None
        total += int(n)
    return total


def open_shard(url: str):
    """A binary file object for a shard: local file, `pipe:` command, or any fsspec URL."""
    scheme = urlparse(url).scheme
    if scheme == "":
        return open(url, "rb")
    if scheme == "pipe":
        return gopen(url, "rb")
    return fsspec.open(url, "rb").open()


def iter_shard(url: str) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """`(index, key, {ext: bytes})` for each sample of a tar, in tar order.

    Members are grouped as the pipeline groups them (`schemas.group_samples`); webdataset's
    `__*__` metadata members are ignored. Raises (tarfile.TarError, OSError) on a shard that
    cannot be read to the end; the sample being read when that happens is not yielded.
    """
    with open_shard(url) as f:
        for index, sample in enumerate(group_samples(tar_members(f))):
            key = sample.pop("__key__")
            yield index, key, sample
