"""Splits of a dataset by a hash of the sample key, shared by the trainer and the pipeline: the
same split on every rank, loader worker, epoch, resume, Beam worker and runner, with no list of
keys to store or ship.

    in_validation(key, 0.1)     # --val-fraction: is this pair held out of training?
    fold_of(key, 5)             # --cross-fit 5 / --exclude-fold 2/5: its fold, 0..4

Both read `key_hash`, a 64-bit blake2b of the key personalised per use, so that validation
pairs and cross-fitting folds are independent of each other: a fold's model still has
validation pairs of its own (`--val-fraction` with `--exclude-fold`), and every fold holds
its share of them.
"""

from __future__ import annotations

import hashlib

VALIDATION = b"webpairs-val"
FOLDS = b"webpairs-fold"
# what `fold_of` computes, as recorded beside cross-fitted scores
FOLD_RULE = (
    "fold = blake2b(key, digest_size=8, person=b'webpairs-fold') as big-endian int * K >> 64"
)


def key_hash(key: str, person: bytes) -> int:
    """A uniform 64-bit integer from the sample key, one independent hash per `person`."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "big")


def in_validation(key: str, fraction: float) -> bool:
    """Is the sample `key` held out? A fixed share of keys, nested: every key held out at one
    fraction is held out at any larger one."""
    if fraction <= 0:
        return False
    return key_hash(key, VALIDATION) / 2**64 < fraction


def fold_of(key: str, folds: int) -> int:
    """The fold (0 .. folds - 1) of the sample `key`: folds of equal expected size, disjoint and
    covering, by integer arithmetic (no float rounding at the edges)."""
    return (key_hash(key, FOLDS) * folds) >> 64
