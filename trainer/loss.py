"""Contrastive losses on normalized embeddings: InfoNCE (CLIP), dense or tiled, and the pairwise
sigmoid loss (SigLIP), dense or tiled, with its text features passed round the ranks.

Under data parallelism every rank computes the rows of its own samples against the columns of
all ranks ("local loss"): the mean of the ranks' losses, and the averaged gradients, equal
single-process training on the concatenated global batch.

- InfoNCE gathers the features of all ranks *with gradients* (B = world * b columns).
- `tiled` never holds the (b, B) logits: it streams a log-sum-exp over column tiles and its
  backward recomputes each tile (Inf-CL), so memory is O(B * D + tile^2).
- The sigmoid loss needs no normalization over columns: each rank passes its text features
  round the ring (`world - 1` point-to-point exchanges) instead of gathering them.
- `groups` (InfoNCE, `--positives captions`): a caption group per sample of the global batch
  (`caption_groups`: identical token sequences share one). Every pair of an image and a text
  of the same group is a positive: the log-probability of the row's positives together
  replaces that of its own pair. Web captions repeat ("image", "a photo of a dog"); InfoNCE
  otherwise asks a text to prefer its own image over others with the very same caption.

    loss = clip_loss(image_features, text_features, logit_scale)                # one process
    loss = clip_loss(image_features, text_features, logit_scale, rank=r, impl="tiled", tile=1024)
    loss = siglip_loss(image_features, text_features, logit_scale, logit_bias, rank=r)
    loss = contrastive_loss(cfg.loss, *model(images, texts), rank=r)
    loss = contrastive_loss(cfg.loss, *model(images, texts), rank=r, groups=caption_groups(texts))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.configs import LossConfig
from trainer.distributed import all_gather_tensor, gather_with_grad, is_distributed, ring_pass


def caption_groups(texts: torch.Tensor) -> torch.Tensor:
    """(b, T) token ids of this rank's captions -> (B,) one group id per caption of the global
    batch, equal for identical token sequences (the same on every rank)."""
    everyone = all_gather_tensor(texts)  # (B, T)
    return torch.unique(everyone, dim=0, return_inverse=True)[1]


def contrastive_loss(
    cfg: LossConfig,
    image_features: torch.Tensor,  # (b, D) this rank's, L2-normalized
    text_features: torch.Tensor,  # (b, D)
    logit_scale: torch.Tensor,  # (1,) = exp(learned log scale)
    logit_bias: torch.Tensor | None = None,  # (1,) SigLIP only
    rank: int = 0,
    groups: torch.Tensor | None = None,  # (B,) caption groups of the global batch (InfoNCE)
) -> torch.Tensor:
    if cfg.kind == "sigmoid":
        return siglip_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            rank,
            impl=cfg.impl,
            tile=cfg.tile,
        )
    return clip_loss(image_features, text_features, logit_scale, rank, cfg.impl, cfg.tile, groups)


def clip_loss(
    image_features: torch.Tensor,  # (b, D) this rank's, L2-normalized
    text_features: torch.Tensor,  # (b, D)
    logit_scale: torch.Tensor,  # (1,) or ()
    rank: int = 0,
    impl: str = "dense",
    tile: int = 1024,
    groups: torch.Tensor | None = None,  # (B,): same group, positives of each other
) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy of image->text and text->image, averaged."""
    all_images = gather_with_grad(image_features)  # (B, D), B = world * b
    all_texts = gather_with_grad(text_features)  # (B, D)
    b = image_features.shape[0]
    if groups is not None:
        return _grouped_clip_loss(image_features, text_features, all_images, all_texts,
                                  logit_scale, groups, rank, impl, tile)  # fmt: skip
    if impl == "tiled":
        # cross-entropy = log-sum-exp over the row - the matching logit
        lse_images = TiledLogSumExp.apply(image_features, all_texts, logit_scale, tile)  # (b,)
        lse_texts = TiledLogSumExp.apply(text_features, all_images, logit_scale, tile)  # (b,)
        positives = logit_scale * (image_features * text_features).sum(dim=1)  # (b,)
        return (lse_images.mean() + lse_texts.mean()) / 2 - positives.mean()
    logits_per_image = logit_scale * image_features @ all_texts.T  # (b, B)
    logits_per_text = logit_scale * text_features @ all_images.T  # (b, B)
    labels = torch.arange(b, device=image_features.device) + rank * b  # (b,) the matching column
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2


def _grouped_clip_loss(images, texts, all_images, all_texts, scale, groups, rank, impl, tile):
    """InfoNCE with every same-group pair a positive: per row, log-sum-exp over all columns
    minus log-sum-exp over the row's positive columns (its own pair among them). With every
    group a single sample, exactly `clip_loss`."""
    b = images.shape[0]
    own = groups[rank * b : (rank + 1) * b]  # (b,) groups of this rank's rows
    if impl == "tiled":
        lse_images = TiledLogSumExp.apply(images, all_texts, scale, tile)  # (b,)
        lse_texts = TiledLogSumExp.apply(texts, all_images, scale, tile)  # (b,)
        pos_images = TiledLogSumExp.apply(images, all_texts, scale, tile, own, groups)  # (b,)
        pos_texts = TiledLogSumExp.apply(texts, all_images, scale, tile, own, groups)  # (b,)
    else:
        positive = own[:, None] == groups[None, :]  # (b, B)
        logits_per_image = scale * images @ all_texts.T  # (b, B)
        logits_per_text = scale * texts @ all_images.T  # (b, B)
        lse_images, lse_texts = logits_per_image.logsumexp(1), logits_per_text.logsumexp(1)
        pos_images = logits_per_image.masked_fill(~positive, float("-inf")).logsumexp(1)
        pos_texts = logits_per_text.masked_fill(~positive, float("-inf")).logsumexp(1)
    return ((lse_images - pos_images).mean() + (lse_texts - pos_texts).mean()) / 2


def _blocks(n: int, tile: int) -> list[slice]:
    return [slice(start, min(start + tile, n)) for start in range(0, n, tile)]


class TiledLogSumExp(torch.autograd.Function):
    """lse_i = log sum_j exp(scale * q_i . k_j) for q (b, D), k (B, D), in (tile, tile) blocks;
    with groups (q_groups (b,), k_groups (B,)), only over the j of row i's group (blocks
    without one are skipped). Backward recomputes every block: d lse_i / d logit_ij =
    softmax_ij, never stored whole."""

    @staticmethod
    def forward(ctx, q, k, scale, tile: int, q_groups=None, k_groups=None):
        lse = q.new_full((q.shape[0],), float("-inf"))  # (b,)
        for rows, cols, mask in _lse_blocks(q, k, tile, q_groups, k_groups):
            block = (q[rows] @ k[cols].T).mul_(scale)  # (t, t) logits
            if mask is not None:
                block.masked_fill_(~mask, float("-inf"))
            lse[rows] = torch.logaddexp(lse[rows], block.logsumexp(dim=1))
        ctx.save_for_backward(q, k, scale, lse, q_groups, k_groups)
        ctx.tile = tile
        return lse

    @staticmethod
    def backward(ctx, grad):  # grad (b,)
        q, k, scale, lse, q_groups, k_groups = ctx.saved_tensors
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
        dscale = torch.zeros((), dtype=q.dtype, device=q.device)
        for rows, cols, mask in _lse_blocks(q, k, ctx.tile, q_groups, k_groups):
            g, lse_rows = grad[rows, None], lse[rows, None]  # (t, 1)
            dot = q[rows] @ k[cols].T  # (t, t), unscaled
            logits = dot * scale
            if mask is not None:
                logits.masked_fill_(~mask, float("-inf"))
            p = logits.sub_(lse_rows).exp_().mul_(g)  # (t, t) d loss / d logits
            dq[rows] += p @ k[cols]
            dk[cols] += p.T @ q[rows]
            dscale += (p * dot).sum()
        return dq.mul_(scale), dk.mul_(scale), dscale.reshape(scale.shape), None, None, None


def _lse_blocks(q, k, tile, q_groups, k_groups):
    """(rows, cols, mask of the pairs that count or None) of every block that holds one."""
    for rows in _blocks(q.shape[0], tile):
        for cols in _blocks(k.shape[0], tile):
            if q_groups is None:
                yield rows, cols, None
                continue
            mask = q_groups[rows, None] == k_groups[None, cols]  # (t, t)
            if mask.any():
                yield rows, cols, mask


def siglip_loss(
    image_features: torch.Tensor,  # (b, D) this rank's, L2-normalized
    text_features: torch.Tensor,  # (b, D)
    logit_scale: torch.Tensor,  # (1,)
    logit_bias: torch.Tensor,  # (1,)
    rank: int = 0,
    exchange: str = "ring",
    impl: str = "dense",
    tile: int = 1024,
) -> torch.Tensor:
    """SigLIP: -1/b sum_ij log sigmoid(z_ij (scale * x_i . y_j + bias)), z = 1 for a matching
    pair, -1 otherwise, over this rank's images and every rank's texts. `exchange`: "ring"
    (texts travel rank to rank, one (b, b) block at a time) or "gather" (all at once)."""
    b = image_features.shape[0]

    def block(texts, positives_at):  # (b, D), column of image 0's match (None: no match here)
        if impl == "tiled":
            return TiledSigmoidLoss.apply(
                image_features, texts, logit_scale, logit_bias, positives_at, tile
            )
        logits = logit_scale * image_features @ texts.T + logit_bias  # (b, b or B)
        signs = -torch.ones_like(logits)
        if positives_at is not None:
            signs.diagonal(offset=positives_at).fill_(1.0)
        return -F.logsigmoid(signs * logits).sum()

    if exchange == "gather" or not is_distributed():
        return block(gather_with_grad(text_features), rank * b) / b
    loss = block(text_features, 0)
    texts = text_features
    for _ in range(torch.distributed.get_world_size() - 1):
        texts = ring_pass(texts)  # another rank's texts: negatives only
        loss = loss + block(texts, None)
    return loss / b


class TiledSigmoidLoss(torch.autograd.Function):
    """sum_ij -log sigmoid(z_ij (scale * q_i . k_j + bias)), z_ij = 1 iff j = i + offset, over
    (tile, tile) blocks; backward recomputes every block: d / d logit_ij = sigmoid - [z = 1]."""

    @staticmethod
    def forward(ctx, q, k, scale, bias, offset: int | None, tile: int):
        total = torch.zeros((), dtype=q.dtype, device=q.device)
        for _, _, logits, positive in _sigmoid_blocks(q, k, scale, bias, offset, tile):
            total += -F.logsigmoid(torch.where(positive, logits, -logits)).sum()
        ctx.save_for_backward(q, k, scale, bias)
        ctx.offset, ctx.tile = offset, tile
        return total

    @staticmethod
    def backward(ctx, grad):
        q, k, scale, bias = ctx.saved_tensors
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
        dscale = torch.zeros((), dtype=q.dtype, device=q.device)
        dbias = torch.zeros((), dtype=q.dtype, device=q.device)
        for rows, cols, logits, positive in _sigmoid_blocks(
            q, k, scale, bias, ctx.offset, ctx.tile
        ):
            g = logits.sigmoid_().sub_(positive.to(logits.dtype)).mul_(grad)  # (t, t)
            dq[rows] += g @ k[cols]
            dk[cols] += g.T @ q[rows]
            dscale += (g * (q[rows] @ k[cols].T)).sum()
            dbias += g.sum()
        dq, dk = dq.mul_(scale), dk.mul_(scale)
        return dq, dk, dscale.reshape(scale.shape), dbias.reshape(bias.shape), None, None


def _sigmoid_blocks(q, k, scale, bias, offset, tile):
    for rows in _blocks(q.shape[0], tile):
        for cols in _blocks(k.shape[0], tile):
            logits = (q[rows] @ k[cols].T).mul_(scale).add_(bias)  # (t, t)
            positive = torch.zeros_like(logits, dtype=torch.bool)
            if offset is not None:
                i = torch.arange(rows.start, rows.stop, device=q.device)[:, None] + offset
                positive = i == torch.arange(cols.start, cols.stop, device=q.device)[None, :]
            yield rows, cols, logits, positive


@torch.no_grad()
def batch_accuracy(
    image_features: torch.Tensor, text_features: torch.Tensor, max_block: int = 2**22
) -> float:
    """Share of this batch's images whose own caption is the nearest (image->text top-1), in
    row blocks of at most `max_block` logits: at b = 65,536 the whole (b, b) matrix is 16 GiB."""
    b = image_features.shape[0]
    hits = 0
    for rows in _blocks(b, max(1, max_block // b)):
        logits = image_features[rows] @ text_features.T  # (rows, b)
        target = torch.arange(rows.start, rows.stop, device=logits.device)
        hits += (logits.argmax(dim=1) == target).sum().item()
    return hits / b
