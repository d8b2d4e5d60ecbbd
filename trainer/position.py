"""Exact data positions: which samples every loader stream reads, and where it stands.

Design
------
*Samples* are named by `(shard, index)`: the shard's position in the resolved shard list and
the sample's position inside the tar (the n-th key group, counting corrupt ones too).

*Streams.* Every rank runs `workers` loader streams (one DataLoader worker each, or one in the
training process when workers=0); stream `(rank, worker)` is the unit that reads, shuffles and
batches. Batches of a rank come round-robin from its streams (PyTorch's in-order DataLoader).

*Plan.* An epoch is a list of *pieces* (a shard, optionally restricted to index ranges). By
default epoch `e` is every shard once, in a permutation drawn from `(seed, e)`; stream
`(rank, worker)` reads `pieces[rank::world][worker::workers]` (split by rank, then by worker),
so no two streams read the same sample in an epoch and together they read all of them.
In resampled mode each stream instead draws its shards with replacement from
`(seed, e, stream)`. Each stream runs through epoch after epoch without end (so ranks never
run dry at different times, which would hang DDP), draining its shuffle buffer at the end of
each epoch; every sample carries the epoch it was read in, so "epoch e" means the samples
tagged e.

*State.* After each batch a stream reports a `StreamState` snapshot: epoch, cursor into its
piece list, index of the next sample to read in that piece, the `(epoch, shard, index)` of
every sample in its shuffle buffer (in buffer order) and the shuffle RNG state. Augmentation
randomness is a pure function of `(seed, epoch, shard, index)`, so it needs no state.
The training process keeps, per stream, the snapshot of the *last batch it trained on*
(prefetched batches do not count) and which worker comes next; that is the checkpoint's
data position.

*Resume, same topology* (same world size and workers): every stream is rebuilt from its
snapshot — reopen the current shard at the saved index, re-read the buffered samples by
`(shard, index)`, restore the RNG — and the DataLoader's workers are rotated so the worker
due next delivers first. The batches are then exactly those of an uninterrupted run.

*Resume, new topology*: per epoch still open in any old stream, the unread remainder is
collected — buffered samples, the rest of the current piece, the pieces not yet started (and
every piece of that epoch for streams that had not reached it) — and becomes that epoch's
piece list in a new plan (`overrides`), split over the new ranks x workers as above. Later
epochs use the default permutation. Every sample of an open epoch is then read exactly once
over the whole run; only the shuffle order differs from an uninterrupted run. (Resampled mode
has no epochs to complete: new streams start fresh at the next epoch.)

    plan = ShardPlan(num_shards=64, seed=0)
    plan.stream_pieces(epoch=0, rank=1, world=2, worker=0, workers=4)
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields

import numpy as np


@dataclass(frozen=True)
class Topology:
    world: int  # ranks
    workers: int  # loader streams per rank (DataLoader workers, at least 1)

    def stream(self, rank: int, worker: int) -> int:
        return rank * self.workers + worker

    @property
    def streams(self) -> int:
        return self.world * self.workers


@dataclass(frozen=True)
class Piece:
    shard: int
    ranges: tuple[tuple[int, int | None], ...] | None = None  # [start, stop) runs; None: all

    def contains(self, index: int) -> bool:
        if self.ranges is None:
            return True
        return any(a <= index and (b is None or index < b) for a, b in self.ranges)

    def end(self) -> int | None:
        """One past the last index this piece may take; None when open-ended."""
        if self.ranges is None or any(b is None for _, b in self.ranges):
            return None
        return max((b for _, b in self.ranges), default=0)

    def from_index(self, start: int) -> Piece:
        """The part of this piece at or after `start`."""
        ranges = self.ranges if self.ranges is not None else ((0, None),)
        kept = []
        for a, b in ranges:
            a = max(a, start)
            if b is None or a < b:
                kept.append((a, b))
        return Piece(self.shard, tuple(kept))

    def to_list(self) -> list:
        return [self.shard, None if self.ranges is None else [list(r) for r in self.ranges]]

    @classmethod
    def from_list(cls, item: list) -> Piece:
        shard, ranges = item
        return cls(shard, None if ranges is None else tuple(tuple(r) for r in ranges))


def index_runs(indices: list[int]) -> tuple[tuple[int, int], ...]:
    """Sorted indices -> [start, stop) runs: [3, 4, 5, 9] -> ((3, 6), (9, 10))."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return tuple((a, b) for a, b in runs)


@dataclass
class StreamState:
    epoch: int  # epoch of the piece being read
    cursor: int = 0  # index into this stream's piece list of `epoch`
    next_index: int = 0  # next sample index to read in that piece's shard
    buffer: list[tuple[int, int, int]] = field(default_factory=list)  # (epoch, shard, index)
    rng: dict | None = None  # shuffle RNG (numpy PCG64 state); None: not started
    batches: int = 0  # batches this stream has produced
    read: int = 0  # samples read from tars
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> samples skipped
    bad_shards: int = 0  # shards that could not be opened or read to the end

    def to_dict(self) -> dict:
        # shallow on purpose: asdict() deep-copies the buffer, ~7% of a loader worker's time
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["buffer"] = [list(b) for b in self.buffer]
        d["skipped"] = dict(self.skipped)
        if self.rng is not None:  # 128-bit integers do not survive every serializer
            state = self.rng["state"]
            d["rng"] = {
                "state": str(state["state"]),
                "inc": str(state["inc"]),
                "has_uint32": int(self.rng["has_uint32"]),  # a buffered half of a 64-bit draw
                "uinteger": int(self.rng["uinteger"]),
            }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StreamState:
        d = dict(d)
        d["buffer"] = [tuple(b) for b in d["buffer"]]
        if d["rng"] is not None:
            r = d["rng"]
            d["rng"] = {
                "bit_generator": "PCG64",
                "state": {"state": int(r["state"]), "inc": int(r["inc"])},
                "has_uint32": r["has_uint32"],
                "uinteger": r["uinteger"],
            }
        return cls(**d)


def _seed(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) for p in parts])


def shuffle_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """Fresh shuffle RNG for a stream that starts at `epoch`."""
    return np.random.Generator(np.random.PCG64(_seed(seed, epoch, stream, 0x5F)))


def sample_seed(seed: int, epoch: int, shard: int, index: int) -> int:
    """Augmentation seed of one sample: the same wherever and whenever it is read."""
    return int(_seed(seed, epoch, shard, index, 0xA6).generate_state(1)[0])


class ShardPlan:
    """Which pieces each stream reads in each epoch; see the module docstring."""

    def __init__(
        self,
        num_shards: int,
        seed: int = 0,
        resampled: bool = False,
        shard_weights: list[float] | None = None,
        overrides: dict[int, list[Piece]] | None = None,
        first_epoch: int = 0,
    ):
        self.num_shards = num_shards
        self.seed = seed
        self.resampled = resampled
        self.shard_weights = shard_weights
        self.overrides = overrides or {}
        self.first_epoch = first_epoch

    def epoch_pieces(self, epoch: int) -> list[Piece]:
        if epoch in self.overrides:
            return self.overrides[epoch]
        order = np.random.Generator(np.random.PCG64(_seed(self.seed, epoch, 0x0E)))
        return [Piece(int(i)) for i in order.permutation(self.num_shards)]

    def stream_pieces(self, epoch: int, rank: int, world: int, worker: int, workers: int):
        if self.resampled:
            stream = Topology(world, workers).stream(rank, worker)
            rng = np.random.Generator(np.random.PCG64(_seed(self.seed, epoch, stream, 0x2E)))
            n = -(-self.num_shards // (world * workers))
            p = None
            if self.shard_weights is not None:
                p = np.asarray(self.shard_weights, dtype=np.float64)
                p = p / p.sum()
            return [Piece(int(i)) for i in rng.choice(self.num_shards, size=n, p=p)]
        return self.epoch_pieces(epoch)[rank::world][worker::workers]

    def state_dict(self) -> dict:
        return {
            "num_shards": self.num_shards,
            "seed": self.seed,
            "resampled": self.resampled,
            "shard_weights": self.shard_weights,
            "overrides": {str(e): [p.to_list() for p in ps] for e, ps in self.overrides.items()},
            "first_epoch": self.first_epoch,
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> ShardPlan:
        overrides = {int(e): [Piece.from_list(p) for p in ps] for e, ps in d["overrides"].items()}
        return cls(
            num_shards=d["num_shards"],
            seed=d["seed"],
            resampled=d["resampled"],
            shard_weights=d["shard_weights"],
            overrides=overrides,
            first_epoch=d["first_epoch"],
        )


def shard_fingerprint(urls: list[str]) -> str:
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]


@dataclass
class DataPosition:
    """Where the training run stands in its data: saved in checkpoints, gathered from all ranks."""

    plan: ShardPlan
    topology: Topology
    streams: dict[int, StreamState | None]  # by Topology.stream(rank, worker); None: not started
    next_worker: int = 0  # worker whose batch each rank trains on next
    fingerprint: str = ""  # of the shard URLs, to refuse resuming on different data

    def state_dict(self) -> dict:
        return {
            "plan": self.plan.state_dict(),
            "topology": asdict(self.topology),
            "streams": {str(k): (v.to_dict() if v else None) for k, v in self.streams.items()},
            "next_worker": self.next_worker,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> DataPosition:
        return cls(
            plan=ShardPlan.from_state_dict(d["plan"]),
            topology=Topology(**d["topology"]),
            streams={
                int(k): (StreamState.from_dict(v) if v else None) for k, v in d["streams"].items()
            },
            next_worker=d["next_worker"],
            fingerprint=d["fingerprint"],
        )

    def for_topology(self, new: Topology) -> DataPosition:
        """The same position for another world size / worker count (module docstring)."""
        if new == self.topology:
            return self
        plan = self.plan
        states = {s: st or StreamState(epoch=plan.first_epoch) for s, st in self.streams.items()}
        last = max([st.epoch for st in states.values()] + list(plan.overrides) + [plan.first_epoch])
        if plan.resampled:
            fresh = ShardPlan(plan.num_shards, plan.seed, True, plan.shard_weights, None, last + 1)
            return DataPosition(fresh, new, {}, 0, self.fingerprint)
        first = min(
            [st.epoch for st in states.values()]
            + [b[0] for st in states.values() for b in st.buffer]
        )
        overrides = {e: self._remaining(e, states) for e in range(first, last + 1)}
        fresh = ShardPlan(plan.num_shards, plan.seed, False, None, overrides, first)
        return DataPosition(fresh, new, {}, 0, self.fingerprint)

    def _remaining(self, epoch: int, states: dict[int, StreamState]) -> list[Piece]:
        old = self.topology
        pieces: list[Piece] = []
        for stream in range(old.streams):
            st = states.get(stream) or StreamState(epoch=self.plan.first_epoch)
            rank, worker = divmod(stream, old.workers)
            own = self.plan.stream_pieces(epoch, rank, old.world, worker, old.workers)
            buffered = defaultdict(list)
            for e, shard, index in st.buffer:
                if e == epoch:
                    buffered[shard].append(index)
            pieces.extend(Piece(shard, index_runs(ix)) for shard, ix in sorted(buffered.items()))
            if st.epoch < epoch:
                pieces.extend(own)
            elif st.epoch == epoch and st.cursor < len(own):
                pieces.append(own[st.cursor].from_index(st.next_index))
                pieces.extend(own[st.cursor + 1 :])
        return pieces


class PositionTracker:
    """In the training process: the state of each of this rank's streams as of the last batch
    trained on, and which worker delivers next."""

    def __init__(self, position: DataPosition, rank: int):
        self.position = position
        self.rank = rank
        self.workers = position.topology.workers
        own = range(rank * self.workers, (rank + 1) * self.workers)
        self.streams: dict[int, StreamState | None] = {s: position.streams.get(s) for s in own}
        self.next_worker = position.next_worker

    def update(self, batch_state: dict) -> None:
        state = dict(batch_state)
        stream = state.pop("stream")
        self.streams[stream] = StreamState.from_dict(state)
        self.next_worker = (stream % self.workers + 1) % self.workers

    def local_state(self) -> dict:
        return {
            "streams": {s: (st.to_dict() if st else None) for s, st in self.streams.items()},
            "next_worker": self.next_worker,
        }

    def merged(self, local_states: list[dict]) -> DataPosition:
        """The whole run's position from every rank's `local_state()`."""
        streams = {}
        for local in local_states:
            for s, st in local["streams"].items():
                streams[int(s)] = StreamState.from_dict(st) if st else None
        p = self.position
        return DataPosition(p.plan, p.topology, streams, self.next_worker, p.fingerprint)

    def skipped(self) -> dict[str, int]:
        """Cumulative skip counts of this rank's streams (for metrics)."""
        totals: dict[str, int] = defaultdict(int)
        for st in self.streams.values():
            if st is None:
                continue
            for reason, n in st.skipped.items():
                totals[reason] += n
            totals["bad_shards"] += st.bad_shards
        return dict(totals)
