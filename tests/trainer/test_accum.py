"""Contrastive gradient accumulation equals training on the whole batch at once, also with
patch dropout (random state replayed), checkpointed blocks and the tiled or sigmoid loss."""

import math
from functools import partial

import pytest
import torch

from trainer.accum import forward_backward
from trainer.configs import LossConfig, TrainConfig
from trainer.loss import caption_groups, contrastive_loss
from trainer.model import create_model
from trainer.session import build_model

B = 8


def model_and_batch(preset="smoke", **overrides):
    torch.manual_seed(0)
    model = create_model(preset, **{"text.vocab_size": 259, "text.context_length": 32, **overrides})
    model = model.double()
    images = torch.randn(B, 3, 32, 32, dtype=torch.float64)
    texts = torch.randint(3, 259, (B, 32))
    texts[torch.arange(B), torch.randint(5, 30, (B,))] = 2
    return model, images, texts


def grads_of(model, images, texts, loss=None, accum_steps=1, replay_rng=True, seed=1):
    """Loss and gradients of one step, from the random state `seed`."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss or LossConfig()
    groups = caption_groups(texts) if loss.positives == "captions" else None
    loss_fn = partial(contrastive_loss, loss, groups=groups)
    out = forward_backward(model, images, texts, loss_fn, accum_steps, replay_rng=replay_rng)
    return out.loss, {n: p.grad.clone() for n, p in model.named_parameters()}


def max_difference(a, b) -> float:
    return max((a[1][n] - g).abs().max().item() for n, g in b[1].items())


def assert_same(a, b, atol=1e-10):
    assert a[0].item() == pytest.approx(b[0].item(), abs=atol)
    for name, grad in b[1].items():
        torch.testing.assert_close(a[1][name], grad, atol=atol, rtol=1e-7, msg=name)


@pytest.mark.parametrize("accum_steps", [2, 3, 8])  # 3: micro-batches of 3, 3 and 2
@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_accumulated_gradients_equal_the_whole_batch(accum_steps, kind):
    sigmoid = (
        {"init_logit_bias": -10, "init_logit_scale": math.log(10)} if kind == "sigmoid" else {}
    )
    model, images, texts = model_and_batch(**sigmoid)
    loss = LossConfig(kind)
    whole = grads_of(model, images, texts, loss)
    assert_same(grads_of(model, images, texts, loss, accum_steps), whole)


@pytest.mark.parametrize("impl", ["dense", "tiled"])
def test_accumulated_caption_positives_equal_the_whole_batch(impl):
    model, images, texts = model_and_batch(**{"vision.patch_dropout": 0.5})
    texts[[3, 6]] = texts[0].clone()  # one caption three times, in three micro-batches
    loss = LossConfig(impl=impl, tile=3, positives="captions")
    whole = grads_of(model, images, texts, loss)
    assert_same(grads_of(model, images, texts, loss, accum_steps=3), whole)
    assert whole[0] < grads_of(model, images, texts)[0]  # the repeats count as positives


def test_accumulation_combines_with_checkpointing_and_the_tiled_loss():
    model, images, texts = model_and_batch(**{"vision.patch_dropout": 0.5})
    whole = grads_of(model, images, texts)
    model.set_grad_checkpointing(True)
    assert_same(grads_of(model, images, texts, LossConfig(impl="tiled", tile=3), 4), whole)


def test_compiled_checkpointed_blocks_accumulate_the_gradients_of_the_eager_whole_batch():
    model, images, texts = model_and_batch(**{"vision.patch_dropout": 0.5})
    whole = grads_of(model, images, texts)
    # the blocks as --compile --grad-checkpointing build them; aot_eager traces them as inductor
    # does (dynamo, AOTAutograd) without its minutes of C++ code generation on this CPU
    t = TrainConfig(compile=True, compile_backend="aot_eager", grad_checkpointing=True)
    compiled = build_model(model.cfg, t, torch.device("cpu")).double()
    compiled.load_state_dict(model.state_dict())
    assert all(unit._compiled_call_impl is not None for unit in compiled.layer_units())
    assert_same(grads_of(compiled, images, texts, accum_steps=4), whole, atol=1e-9)


def test_with_patch_dropout_replayed_randomness_equals_the_whole_batch():
    model, images, texts = model_and_batch(**{"vision.patch_dropout": 0.5})
    whole = grads_of(model, images, texts)
    assert max_difference(grads_of(model, images, texts, seed=2), whole) > 1e-3  # random masks ...
    assert_same(grads_of(model, images, texts, accum_steps=4), whole)  # ... and replayed


def test_without_replaying_the_randomness_patch_dropout_breaks_the_gradient():
    model, images, texts = model_and_batch(**{"vision.patch_dropout": 0.5})
    whole = grads_of(model, images, texts)
    broken = grads_of(model, images, texts, accum_steps=4, replay_rng=False)
    assert broken[0].item() == pytest.approx(whole[0].item(), abs=1e-10)  # the same loss ...
    assert max_difference(broken, whole) > 1e-3  # ... but the re-forward saw other masks


def test_batchnorm_statistics_are_updated_once_per_micro_batch():
    model, images, texts = model_and_batch("tiny-resnet")
    grads_of(model, images, texts, accum_steps=2)
    accumulated = {n: b.clone() for n, b in model.named_buffers()}
    model, images, texts = model_and_batch("tiny-resnet")
    with torch.no_grad():  # what one pass over the two micro-batches does to them
        for x, t in zip(images.tensor_split(2), texts.tensor_split(2)):
            model(x, t)
    for name, value in model.named_buffers():
        torch.testing.assert_close(accumulated[name], value, atol=0, rtol=0, msg=name)
