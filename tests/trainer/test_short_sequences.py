"""CLIPA / FLIP: patch dropout, other resolutions through interpolated position embeddings,
shorter captions, the finetune phase at full length; and checkpointed blocks."""

import pytest
import torch

from trainer.configs import ScheduleConfig, get_model_config
from trainer.model import create_model, drop_patches, interpolate_pos_embed
from trainer.schedule import in_finetune_phase, input_sizes_at


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("smoke", **{"text.vocab_size": 259, **overrides}).double()


def batch(n=4, size=32, tokens=32):
    torch.manual_seed(1)
    images = torch.randn(n, 3, size, size, dtype=torch.float64)
    texts = torch.randint(3, 259, (n, tokens))
    texts[:, tokens // 2] = 2
    return images, texts


def test_patch_dropout_zero_is_no_dropout():
    images, _ = batch()
    plain = tiny().eval().encode_image(images)
    training = tiny(**{"vision.patch_dropout": 0.0}).train().encode_image(images)
    torch.testing.assert_close(training, plain, atol=0, rtol=0)
    x = torch.randn(4, 16, 8, dtype=torch.float64)
    kept = drop_patches(x, keep=16)  # keeping all: the same patches, shuffled
    torch.testing.assert_close(kept.sort(dim=1).values, x.sort(dim=1).values, atol=0, rtol=0)


def test_patch_dropout_keeps_a_share_of_the_patches_while_training_only():
    model = tiny(**{"vision.patch_dropout": 0.75})
    seen = []
    model.visual.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    images, _ = batch()
    model.train().encode_image(images)
    model.eval().encode_image(images)
    assert seen == [1 + 4, 1 + 16]  # class token + 25% of the 4 x 4 patches; then all


def test_position_embedding_interpolation_is_identity_at_the_same_size():
    pos = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pos, (4, 4)) is pos
    constant = torch.ones(1, 1 + 16, 8)  # bicubic keeps a constant constant, at any size
    torch.testing.assert_close(interpolate_pos_embed(constant, (7, 7)), torch.ones(1, 1 + 49, 8))


def test_lower_resolution_and_shorter_captions_run_through_the_full_size_model():
    model = tiny()
    images, texts = batch(size=16, tokens=8)
    image_features, text_features, _ = model(images, texts)
    assert image_features.shape == text_features.shape == (4, 64)
    image_features.sum().backward()
    assert model.visual.pos_embed.grad.abs().sum() > 0  # trained through the interpolation


@pytest.mark.parametrize("preset", ["smoke", "tiny", "tiny-resnet"])
def test_checkpointed_blocks_give_the_same_gradients(preset):
    images, texts = batch()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = create_model(preset, **{"text.vocab_size": 259, "text.context_length": 32})
        model = model.double()
        model.set_grad_checkpointing(checkpointing)
        image_features, text_features, scale = model(images, texts)
        (scale * image_features @ text_features.T).logsumexp(dim=1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-12, rtol=0, msg=name)


def test_input_sizes_switch_to_the_models_at_the_finetune_step():
    model = get_model_config("smoke")  # 32 px, 32 tokens
    schedule = ScheduleConfig(finetune_at=90, image_size=16, context_length=8)
    assert input_sizes_at(0, schedule, model) == (16, 8)
    assert input_sizes_at(89, schedule, model) == (16, 8) and not in_finetune_phase(89, schedule)
    assert input_sizes_at(90, schedule, model) == (32, 32) and in_finetune_phase(90, schedule)
    assert input_sizes_at(5, ScheduleConfig(), model) == (32, 32)
    assert not in_finetune_phase(10**6, ScheduleConfig())
