"""The training data stream: shards -> samples -> shuffle -> decode + augment -> tokenize -> batches.

Each loader stream (one per DataLoader worker per rank) composes small generator stages, as in
webdataset's filters.py: `read_stream` -> `shuffle` -> `decode_samples` -> `batch_samples`.
Shards are split by rank, then by worker, over a deterministic per-epoch order (or resampled),
and every batch carries its stream's position so that `--resume latest` continues exactly,
even on a different world size; the design is in `trainer/position.py`.

Corrupt samples (missing image or caption, undecodable image) and unreadable shards are
skipped with a counted warning; a stream fails with `DataError` when it skips more than
`max_skipped_fraction` of what it reads.

    shards = resolve_sources(cfg.data.data)
    check_data(shards, cfg.data, topology, tokenizer)
    position = new_position(shards, cfg.data, topology)
    loader = build_loader(shards, cfg.data, tokenizer, position, rank)
    batch = next(iter(loader))  # image (B, 3, S, S) uint8, text (B, T), key [B], state {...}
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from schemas.imagehash import DECODE_ERRORS
from schemas.sample import image_extension
from trainer.configs import DataConfig
from trainer.position import (
    DataPosition,
    Piece,
    ShardPlan,
    StreamState,
    Topology,
    index_runs,
    sample_seed,
    shard_fingerprint,
    shuffle_rng,
)
from trainer.sources import SHARD_ERRORS, DataError, Shard, iter_shard
from trainer.transforms import (
    decode_image,
    random_resized_crop,
    resize_center_crop,
)
from trainer.validation import drop_held_out

log = logging.getLogger(__name__)

EPOCH_END = {"__epoch_end__": True}  # marker from read_stream: shuffle drains its buffer
_LOUD_SKIPS = 10  # warnings logged per stream before skips are only counted


def read_piece(shard: Shard, piece: Piece, start: int, state: StreamState) -> Iterator[dict]:
    """Raw samples of one piece from index `start` on; advances `state.next_index`."""
    end = piece.end()
    if shard.nsamples is not None:
        end = shard.nsamples if end is None else min(end, shard.nsamples)
    if end is not None and start >= end:
        return
    last = -1
    try:
        for index, key, members in iter_shard(shard.url):
            last = index
            if index < start or not piece.contains(index):
                continue
            state.next_index = index + 1
            state.read += 1
            yield {"__key__": key, "__shard__": piece.shard, "__index__": index, **members}
            if end is not None and index + 1 >= end:
                return
    except SHARD_ERRORS as e:
        state.bad_shards += 1
        log.warning("skipping the rest of shard %s after %d samples: %s", shard.url, last + 1, e)
        return
    if end is not None and last + 1 < end:
        state.bad_shards += 1
        log.warning("shard %s ended after %d samples, expected %d", shard.url, last + 1, end)


def read_stream(
    shards: list[Shard],
    plan: ShardPlan,
    topology: Topology,
    rank: int,
    worker: int,
    state: StreamState,
) -> Iterator[dict]:
    """This stream's raw samples, epoch after epoch, without end; advances `state`.
    Yields EPOCH_END after each epoch, so no batch mixes samples of two epochs needlessly."""
    empty_epochs = 0
    while True:
        pieces = plan.stream_pieces(state.epoch, rank, topology.world, worker, topology.workers)
        read_before = state.read
        while state.cursor < len(pieces):
            piece = pieces[state.cursor]
            for sample in read_piece(shards[piece.shard], piece, state.next_index, state):
                sample["__epoch__"] = state.epoch
                yield sample
            state.cursor += 1
            state.next_index = 0
        empty_epochs = empty_epochs + 1 if state.read == read_before else 0
        if empty_epochs > len(plan.overrides) + 1:
            raise DataError(
                f"rank {rank} loader worker {worker} read no sample in {empty_epochs} epochs "
                f"({state.bad_shards} unreadable shards): check the shards"
            )
        state.epoch += 1
        state.cursor = 0
        state.next_index = 0
        yield EPOCH_END


def fetch_samples(shards: list[Shard], ids: list[tuple[int, int, int]]) -> list[dict]:
    """Re-read samples by `(epoch, shard, index)`, in that order (a restored shuffle buffer)."""
    wanted = defaultdict(list)
    for _, shard, index in ids:
        wanted[shard].append(index)
    found = {}
    scratch = StreamState(epoch=0)
    for shard, indices in wanted.items():
        piece = Piece(shard, index_runs(indices))
        for sample in read_piece(shards[shard], piece, 0, scratch):
            found[shard, sample["__index__"]] = sample
    samples = []
    for epoch, shard, index in ids:
        if (shard, index) not in found:
            log.warning("buffered sample %d of shard %s is gone", index, shards[shard].url)
            continue
        samples.append({**found[shard, index], "__epoch__": epoch})
    return samples


def shuffle(samples: Iterator[dict], buffer: list, rng: np.random.Generator, size: int):
    """Shuffle through `buffer` (the caller keeps it, to snapshot): fill to `size`, then
    swap a random element out for every element in; drain at EPOCH_END and at the end."""
    for sample in samples:
        if sample is EPOCH_END:
            while buffer:
                yield _pop_random(buffer, rng)
            continue
        buffer.append(sample)
        if len(buffer) >= size:
            yield _pop_random(buffer, rng)
    while buffer:
        yield _pop_random(buffer, rng)


def _pop_random(buffer: list, rng: np.random.Generator) -> dict:
    k = int(rng.integers(len(buffer)))
    buffer[k], buffer[-1] = buffer[-1], buffer[k]
    return buffer.pop()


class SkipCounter:
    """Counts skipped samples into a stream's state and enforces the configured limit."""

    def __init__(self, state: StreamState, cfg: DataConfig, where: str):
        self.state, self.cfg, self.where = state, cfg, where

    def __call__(self, reason: str, sample: dict, detail: object = "") -> None:
        skipped = self.state.skipped
        skipped[reason] = skipped.get(reason, 0) + 1
        total = sum(skipped.values())
        level = logging.WARNING if total <= _LOUD_SKIPS else logging.DEBUG
        log.log(level, "%s: skipped %s (%s) %s", self.where, sample.get("__key__"), reason, detail)
        read = self.state.read
        if read >= self.cfg.skip_grace and total > self.cfg.max_skipped_fraction * read:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
            raise DataError(
                f"{self.where} skipped {total} of {read} samples ({reasons}), more than "
                f"--max-skipped-fraction {self.cfg.max_skipped_fraction}"
            )


def decode_samples(
    samples: Iterator[dict], cfg: DataConfig, skip: Callable, train: bool = True
) -> Iterator[dict]:
    """Raw samples -> {"image": uint8 (3, S, S), "caption": str, ...}; corrupt ones skipped."""
    min_side = round(cfg.image_size / cfg.crop_scale[0] ** 0.5) if train else cfg.image_size
    for sample in samples:
        ext = image_extension(sample)
        if ext is None:
            skip("missing_image", sample, sorted(k for k in sample if not k.startswith("__")))
            continue
        if "txt" not in sample:
            skip("missing_caption", sample)
            continue
        try:
            image = decode_image(sample[ext], min_side=min_side)
        except DECODE_ERRORS as e:
            skip("decode_error", sample, e)
            continue
        if train:
            seed = sample_seed(
                cfg.seed, sample["__epoch__"], sample["__shard__"], sample["__index__"]
            )
            pixels = random_resized_crop(
                image, cfg.image_size, cfg.crop_scale, rng=random.Random(seed)
            )
        else:
            pixels = resize_center_crop(image, cfg.image_size)
        yield {
            "image": pixels,
            "caption": sample["txt"].decode("utf-8", errors="replace"),
            "__key__": sample["__key__"],
            "__id__": (sample["__epoch__"], sample["__shard__"], sample["__index__"]),
        }


def collate(samples: list[dict], tokenizer: Callable) -> dict:
    return {
        "image": torch.stack([s["image"] for s in samples]),  # (B, 3, S, S) uint8
        "text": tokenizer([s["caption"] for s in samples]),  # (B, T) long
        "key": [s["__key__"] for s in samples],
        "sample": torch.tensor([s["__id__"] for s in samples], dtype=torch.long),  # (B, 3)
    }


def batch_samples(
    samples: Iterator[dict], batch_size: int, tokenizer: Callable, snapshot: Callable[[], dict]
) -> Iterator[dict]:
    """Full batches only (the stream has no end); each carries the stream state after it."""
    batch: list[dict] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield {**collate(batch, tokenizer), "state": snapshot()}
            batch = []


def stream_batches(
    shards: list[Shard],
    cfg: DataConfig,
    tokenizer: Callable,
    position: DataPosition,
    rank: int,
    worker: int,
) -> Iterator[dict]:
    """The batches of stream (rank, worker), continuing from `position` (fresh if unknown)."""
    topology = position.topology
    stream = topology.stream(rank, worker)
    start = position.streams.get(stream)
    state = (
        StreamState.from_dict(start.to_dict()) if start else StreamState(position.plan.first_epoch)
    )
    rng = shuffle_rng(cfg.seed, state.epoch, stream)
    if state.rng is not None:
        rng.bit_generator.state = state.rng
    buffer = fetch_samples(shards, state.buffer)
    skip = SkipCounter(state, cfg, f"rank {rank} loader worker {worker}")

    def snapshot() -> dict:
        state.buffer = [(s["__epoch__"], s["__shard__"], s["__index__"]) for s in buffer]
        state.rng = rng.bit_generator.state
        state.batches += 1
        return {"stream": stream, **state.to_dict()}

    samples = read_stream(shards, position.plan, topology, rank, worker, state)
    samples = drop_held_out(samples, cfg)
    if any(epoch < state.epoch for epoch, _, _ in state.buffer):
        # the snapshot was taken while the buffer drained an epoch's end: go on draining
        samples = itertools.chain([EPOCH_END], samples)
    samples = shuffle(samples, buffer, rng, max(1, cfg.shuffle_buffer))
    samples = decode_samples(samples, cfg, skip, train=True)
    yield from batch_samples(samples, cfg.batch_size, tokenizer, snapshot)


class ShardStream(IterableDataset):
    """One rank's loader streams; DataLoader worker i runs stream (i + next_worker) % workers,
    so that after a resume the stream due next delivers the first batch."""

    def __init__(self, shards, cfg: DataConfig, tokenizer, position: DataPosition, rank: int):
        self.shards, self.cfg, self.tokenizer = shards, cfg, tokenizer
        self.position, self.rank = position, rank

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        loader_worker = info.id if info is not None else 0
        worker = (loader_worker + self.position.next_worker) % self.position.topology.workers
        yield from stream_batches(
            self.shards, self.cfg, self.tokenizer, self.position, self.rank, worker
        )


def _as_is(batch: dict) -> dict:
    return batch


def build_loader(
    shards: list[Shard], cfg: DataConfig, tokenizer, position: DataPosition, rank: int
) -> DataLoader:
    dataset = ShardStream(shards, cfg, tokenizer, position, rank)
    return DataLoader(
        dataset,
        batch_size=None,  # the streams batch themselves
        collate_fn=_as_is,
        num_workers=cfg.workers,
        prefetch_factor=cfg.prefetch if cfg.workers else None,
        pin_memory=torch.cuda.is_available(),
        # its own generator: each iterator draws a worker seed, which from the global one
        # would shift the model's random state (patch dropout) between a run and its resume
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def shard_weights(shards: list[Shard], cfg: DataConfig) -> list[float] | None:
    """Per-shard draw weights giving each source its mixing weight (resampled mode)."""
    if cfg.weights is None:
        return None
    per_source = defaultdict(int)
    for s in shards:
        per_source[s.source] += 1
    return [cfg.weights[s.source] / per_source[s.source] for s in shards]


def new_position(shards: list[Shard], cfg: DataConfig, topology: Topology) -> DataPosition:
    plan = ShardPlan(len(shards), cfg.seed, cfg.resampled, shard_weights(shards, cfg))
    return DataPosition(plan, topology, {}, 0, shard_fingerprint([s.url for s in shards]))


def check_data(shards: list[Shard], cfg: DataConfig, topology: Topology, tokenizer) -> None:
    """Health checks before the first step; raises DataError with what to change."""
    if cfg.weights is not None:
        if not cfg.resampled:
            raise DataError("mixing weights need --resampled (epochs read every shard once)")
        if len(cfg.weights) != len(cfg.data):
            raise DataError(f"{len(cfg.weights)} mixing weights for {len(cfg.data)} --data sources")
        if any(w < 0 for w in cfg.weights) or sum(cfg.weights) <= 0:
            raise DataError(f"mixing weights must be >= 0 and not all 0: {cfg.weights}")
    if not cfg.resampled and len(shards) < topology.streams:
        raise DataError(
            f"{len(shards)} shards cannot feed {topology.world} ranks x {topology.workers} "
            f"loader workers = {topology.streams} streams; use more shards, fewer --workers, "
            f"or --resampled"
        )
    url = shards[0].url
    try:
        with contextlib.closing(iter_shard(url)) as samples:
            first = next(samples, None)
    except SHARD_ERRORS as e:
        raise DataError(f"cannot read shard {url}: {e}") from None
    if first is None:
        raise DataError(f"shard {url} holds no samples")
    _, key, members = first
    if image_extension(members) is None or "txt" not in members:
        raise DataError(
            f"sample {key!r} in {url} has members {sorted(members)}; expected KEY.jpg|png|webp "
            f"(an image) and KEY.txt (the caption)"
        )
    state = StreamState(epoch=0)
    skip = SkipCounter(state, DataConfig(max_skipped_fraction=1.0), "health check")
    raw = read_piece(shards[0], Piece(0, ((0, cfg.batch_size),)), 0, state)
    samples = list(decode_samples(({**s, "__epoch__": 0} for s in raw), cfg, skip, train=True))
    if not samples:
        raise DataError(f"no sample of the first {state.read} in {url} decodes: {state.skipped}")
    collate(samples, tokenizer)
