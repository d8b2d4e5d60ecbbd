"""Contrastive gradient accumulation (BASIC; GradCache): the contrastive batch is as large as
the data-parallel batch, the activation memory that of one micro-batch.

1. Embeddings pass: each of the K micro-batches forward without autograd; features cached.
2. The loss over the whole batch (every rank's, through the gather or ring of trainer/loss.py)
   on the cached features as leaves, once; backward to those features only.
3. Each micro-batch forward again with autograd, from the random state it saw in step 1, and
   backward from its slice of the cached gradients (the logit scale's with the last one).
   Gradients are reduced across ranks once, in the last backward (DDP's no_sync, FSDP2's
   set_requires_gradient_sync).

The random state (CPU and CUDA generators) is recorded before each micro-batch of step 1 and
restored before its replay, so dropout and patch dropout drop the same things twice. Without
it the replayed features are not the ones the loss saw, and the gradient is wrong (OpenCLIP's
--accum-freq has this flaw: its cached negatives and recomputed positives see different masks).

    out = forward_backward(wrapped, images, texts, loss_fn, accum_steps=4, prepare=normalize)
    out.loss, out.image_features  # () and (b, D), detached
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainer.distributed import gradient_sync


@dataclass
class Outputs:
    loss: torch.Tensor  # () this rank's loss
    image_features: torch.Tensor  # (b, D)
    text_features: torch.Tensor  # (b, D)
    logit_scale: torch.Tensor  # (1,)


def forward_backward(
    model: nn.Module,
    images: torch.Tensor,  # (b, 3, S, S)
    texts: torch.Tensor,  # (b, T)
    loss_fn: Callable[..., torch.Tensor],  # (image_features, text_features, scale[, bias])
    accum_steps: int = 1,
    autocast: contextlib.AbstractContextManager | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    replay_rng: bool = True,  # False only to show what goes wrong without it (tests)
) -> Outputs:
    """Forward and backward of one step; gradients left in the parameters' .grad.
    `prepare` turns each micro-batch of `images` into model input (uint8 -> normalized
    float), so that the whole batch is held only as it came."""
    autocast = autocast or contextlib.nullcontext()
    prepare = prepare or (lambda x: x)
    if accum_steps == 1:
        with autocast:
            outputs = [_for_loss(o) for o in model(prepare(images), texts)]
        loss = loss_fn(*outputs)
        loss.backward()
        return _detached(loss, outputs)

    image_chunks = images.tensor_split(accum_steps)
    text_chunks = texts.tensor_split(accum_steps)
    states, features, scalars = _embeddings_pass(
        model, image_chunks, text_chunks, autocast, prepare
    )
    after = rng_state(images.device)
    buffers = [b.detach().clone() for b in model.buffers()]

    image_features, text_features = (f.requires_grad_() for f in features)  # (b, D) each
    scalars = [s.requires_grad_() for s in scalars]  # scale (, bias)
    loss = loss_fn(image_features, text_features, *scalars)
    loss.backward()  # to the cached features only
    image_grads = image_features.grad.tensor_split(accum_steps)
    text_grads = text_features.grad.tensor_split(accum_steps)

    for i, (x, t) in enumerate(zip(image_chunks, text_chunks)):
        last = i == accum_steps - 1
        if replay_rng:
            # a copy: torch.set_rng_state reads a row view of the buffer from its start
            set_rng_state({k: v[i].clone() for k, v in states.items()}, images.device)
        with gradient_sync(model, enabled=last):
            with autocast:
                outputs = [_for_loss(o) for o in model(prepare(x), t)]
            # the scale and bias were used once by the loss: their gradient once, with the
            # last micro-batch; zeros before, so that every parameter has a gradient in every
            # backward (FSDP2 with bf16 parameters otherwise fails to reduce a mix of bf16 and
            # fp32 gradients: pytorch/pytorch#196996)
            scalar_grads = [s.grad if last else torch.zeros_like(s.grad) for s in scalars]
            torch.autograd.backward(outputs, [image_grads[i], text_grads[i], *scalar_grads])
    set_rng_state(after, images.device)
    with torch.no_grad():  # BatchNorm running statistics: as after step 1, not updated twice
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    return _detached(loss, [image_features, text_features, *scalars])


@torch.no_grad()
def _embeddings_pass(model, image_chunks, text_chunks, autocast, prepare):
    """Step 1, without autograd: the random state before each micro-batch ({generator: (K, n)}),
    the (b, D) image and text features of the whole batch, and the scalars (scale, bias).
    States and features go straight into one buffer each: thousands of small tensors kept
    alive between the micro-batches' activations fragment the CPU heap (at B = 65,536 in
    micro-batches of 64, a peak 2-5x higher, bench/RESULTS-contrastive.md)."""
    states, features, start = None, None, 0
    total = sum(len(x) for x in image_chunks)
    for i, (x, t) in enumerate(zip(image_chunks, text_chunks)):
        state = rng_state(x.device)
        if states is None:
            states = {k: v.new_empty((len(image_chunks), *v.shape)) for k, v in state.items()}
        for k, v in state.items():
            states[k][i] = v
        with autocast:
            outputs = [_for_loss(o) for o in model(prepare(x), t)]
        if features is None:
            features = [o.new_empty((total, *o.shape[1:])) for o in outputs[:2]]  # (b, D)
        for buffer, o in zip(features, outputs[:2]):
            buffer[start : start + len(x)] = o
        start += len(x)
    return states, features, [o.detach() for o in outputs[2:]]  # the bias is a parameter


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _for_loss(x: torch.Tensor) -> torch.Tensor:
    """The loss runs in fp32 (outside autocast) whatever precision the towers ran in."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _detached(loss: torch.Tensor, outputs: list[torch.Tensor]) -> Outputs:
    image_features, text_features, logit_scale = (o.detach() for o in outputs[:3])
    return Outputs(loss.detach(), image_features, text_features, logit_scale)
