"""Contrastive losses on normalized embeddings.

Under data parallelism every rank gathers the features of all ranks *with gradients* and
computes the rows of its own samples against all columns ("local loss"): the mean of the
ranks' losses, and DDP's averaged gradients, equal single-process training on the
concatenated global batch.

    loss = clip_loss(image_features, text_features, logit_scale)           # one process
    loss = clip_loss(image_features, text_features, logit_scale, rank=r)   # under torchrun
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.distributed import gather_with_grad


def clip_loss(
    image_features: torch.Tensor,  # (b, D) this rank's, L2-normalized
    text_features: torch.Tensor,  # (b, D)
    logit_scale: torch.Tensor,  # () = exp(learned log scale)
    rank: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy of image->text and text->image, averaged."""
    all_images = gather_with_grad(image_features)  # (B, D), B = world * b
    all_texts = gather_with_grad(text_features)  # (B, D)
    logits_per_image = logit_scale * image_features @ all_texts.T  # (b, B)
    logits_per_text = logit_scale * text_features @ all_images.T  # (b, B)
    b = image_features.shape[0]
    labels = torch.arange(b, device=image_features.device) + rank * b  # (b,) the matching column
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2


@torch.no_grad()
def batch_accuracy(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Share of this batch's images whose own caption is the nearest (image->text top-1)."""
    logits = image_features @ text_features.T  # (b, b)
    target = torch.arange(logits.shape[0], device=logits.device)
    return (logits.argmax(dim=1) == target).float().mean().item()
