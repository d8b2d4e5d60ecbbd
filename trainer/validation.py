"""Validation pairs held out of the training shards (`--val-fraction`): chosen by a hash of the
sample key, so the split is the same on every rank, worker, epoch, resume and world size, and
needs no second copy of the data. The training stream drops them (`drop_held_out`); rank 0
reads up to `val_max_samples` of them once and measures on them.

    python -m trainer train --data 'shards/*.tar' --output runs/x --val-fraction 0.1 --eval-every 100
    # metrics.jsonl: {"step": 100, "val/loss": 2.71, "val/image_to_text_R@1": 0.41, ...}

Choose steps, learning rates and thresholds on these figures, never on evaluation data. The
loss is InfoNCE over chunks of the training batch size (comparable with the training loss);
recall counts a retrieved caption identical to the true one as a hit, since web captions
repeat ("image", "a photo of a dog") and no model can tell identical captions apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from schemas.folds import fold_of, in_validation
from schemas.imagehash import DECODE_ERRORS
from schemas.sample import image_extension
from trainer.configs import DataConfig
from trainer.sources import SHARD_ERRORS, DataError, Shard, iter_shard
from trainer.transforms import decode_image, normalize, resize_center_crop

log = logging.getLogger(__name__)


def held_out(cfg: DataConfig) -> Callable[[str], bool] | None:
    """Is a key kept out of training: a validation pair (`--val-fraction`) or a pair of the
    excluded cross-fitting fold (`--exclude-fold I/K`)? None when nothing is held out."""
    fraction, excluded = cfg.val_fraction, cfg.exclude_fold
    if not fraction and excluded is None:
        return None

    def test(key: str) -> bool:
        if in_validation(key, fraction):
            return True
        return excluded is not None and fold_of(key, excluded[1]) == excluded[0]

    return test


def drop_held_out(samples: Iterator[dict], cfg: DataConfig) -> Iterator[dict]:
    """The training stream without the held-out samples (markers such as EPOCH_END pass)."""
    test = held_out(cfg)
    for sample in samples:
        if test is None or "__key__" not in sample or not test(sample["__key__"]):
            yield sample


@dataclass
class ValidationSet:
    images: torch.Tensor  # (N, 3, S, S) uint8, evaluation view (center crop)
    texts: torch.Tensor  # (N, T) token ids
    captions: list[str]  # (N,)
    keys: list[str]  # (N,)


def load_validation(shards: list[Shard], cfg: DataConfig, tokenizer) -> ValidationSet:
    """The held-out pairs of `shards`, read in shard order until `cfg.val_max_samples`."""
    images, captions, keys = [], [], []
    for shard in shards:
        try:
            for _, key, members in iter_shard(shard.url):
                ext = image_extension(members)
                if not in_validation(key, cfg.val_fraction) or ext is None or "txt" not in members:
                    continue
                try:
                    image = decode_image(members[ext], cfg.image_size)
                except DECODE_ERRORS:
                    continue
                images.append(resize_center_crop(image, cfg.image_size))
                captions.append(members["txt"].decode("utf-8", errors="replace"))
                keys.append(key)
                if len(keys) >= cfg.val_max_samples:
                    break
        except SHARD_ERRORS as e:
            log.warning("validation: skipping the rest of shard %s: %s", shard.url, e)
        if len(keys) >= cfg.val_max_samples:
            break
    if len(keys) < 2:
        raise DataError(
            f"--val-fraction {cfg.val_fraction} holds out {len(keys)} readable pairs: "
            f"too few to validate on"
        )
    return ValidationSet(torch.stack(images), tokenizer(captions), captions, keys)


@torch.no_grad()
def validation_metrics(model, vset: ValidationSet, batch_size: int, device) -> dict[str, float]:
    """InfoNCE over chunks of `batch_size` (the model's own temperature) and caption-aware
    recall@1 both ways over the whole set."""
    was_training = model.training
    model.eval()
    image_parts, text_parts = [], []
    for start in range(0, len(vset.captions), 256):
        end = start + 256
        pixels = normalize(vset.images[start:end].to(device))
        image_parts.append(model.encode_image(pixels).float())
        text_parts.append(model.encode_text(vset.texts[start:end].to(device)).float())
    model.train(was_training)
    images = F.normalize(torch.cat(image_parts), dim=-1)  # (N, D)
    texts = F.normalize(torch.cat(text_parts), dim=-1)  # (N, D)
    scale = model.logit_scale.exp().float()
    losses, weights = [], []
    for start in range(0, images.shape[0], batch_size):
        i, t = images[start : start + batch_size], texts[start : start + batch_size]
        if i.shape[0] < 2:
            continue
        logits = scale * i @ t.T  # (b, b)
        labels = torch.arange(i.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        losses.append(loss.item() * i.shape[0])
        weights.append(i.shape[0])
    # same[i, j]: captions i and j are the same text, so either is a right answer
    ids = {c: n for n, c in enumerate(dict.fromkeys(vset.captions))}
    caption_id = torch.tensor([ids[c] for c in vset.captions], device=images.device)  # (N,)
    sim = images @ texts.T  # (N, N)
    i2t = caption_id[sim.argmax(dim=1)] == caption_id
    t2i = caption_id[sim.argmax(dim=0)] == caption_id
    return {
        "val/loss": sum(losses) / sum(weights),
        "val/image_to_text_R@1": i2t.float().mean().item(),
        "val/text_to_image_R@1": t2i.float().mean().item(),
        "val/pairs": float(images.shape[0]),
    }
