import math

import pytest
import torch

from trainer.configs import UserError, get_model_config
from trainer.model import CLIP, create_model


def tiny(**overrides) -> CLIP:
    torch.manual_seed(0)
    return create_model("smoke", **{"text.vocab_size": 259, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [{}, {"vision.pool": "cls"}, {"text.causal": False, "text.pool": "mean"}],
    ids=["mean-pool", "cls-pool", "bidirectional"],
)
def test_towers_map_to_unit_vectors_of_embed_dim(overrides):
    model = tiny(**overrides)
    images, texts = torch.randn(3, 3, 32, 32), torch.randint(3, 259, (3, 32))
    texts[:, 10] = 2  # end of text
    image_features, text_features, scale = model(images, texts)
    assert image_features.shape == text_features.shape == (3, 64)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(3))
    assert torch.allclose(text_features.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_conv_stem_reaches_the_patch_grid_with_convolutions(patch):
    model = tiny(**{"vision.stem": "conv", "vision.patch_size": patch})
    stem = model.visual.patch_embed
    assert [m.stride[0] for m in stem if isinstance(m, torch.nn.Conv2d)] == [2] * (
        patch.bit_length() - 1
    ) + [1]
    assert stem(torch.randn(2, 3, 32, 32)).shape == (2, 64, 32 // patch, 32 // patch)
    assert model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    with pytest.raises(UserError, match="power-of-two"):
        get_model_config(
            "tiny", ["vision.stem=conv", "vision.patch_size=6", "vision.image_size=36"]
        )


def test_clip_init_scales_with_width_and_depth():
    block = tiny().text.blocks[0]  # width 64, 2 layers
    assert block.attn.qkv.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)
    assert block.mlp.fc.weight.std().item() == pytest.approx(128**-0.5, rel=0.1)
    assert block.attn.proj.weight.std().item() == pytest.approx(64**-0.5 / 2, rel=0.1)
    assert tiny(init="normal").text.blocks[0].attn.qkv.weight.std().item() == pytest.approx(
        0.02, rel=0.1
    )


def test_resnet_image_tower():
    torch.manual_seed(0)
    model = create_model("tiny-resnet", **{"text.vocab_size": 259})
    assert model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_causal_text_ignores_what_follows_the_end_of_text_token():
    model = tiny().eval()
    texts = torch.zeros(2, 32, dtype=torch.long)
    texts[:, :6] = torch.tensor([1, 70, 71, 72, 73, 2])
    texts[1, 6:12] = 99  # junk after EOT
    a, b = model.encode_text(texts)
    assert torch.allclose(a, b, atol=1e-6)


def test_bidirectional_text_masks_padding():
    model = tiny(**{"text.causal": False, "text.pool": "mean"}).eval()
    short = torch.zeros(1, 32, dtype=torch.long)
    short[0, :4] = torch.tensor([1, 70, 71, 2])
    with torch.no_grad():
        full = model.encode_text(short)
        cropped = model.encode_text(short[:, :8])  # fewer pads: same tokens attended
    assert torch.allclose(full, cropped, atol=1e-6)


def test_logit_scale_is_clamped_at_100():
    model = tiny()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)
    assert tiny().logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_no_weight_decay_on_gains_biases_embeddings_and_scale():
    names = tiny().no_weight_decay()
    assert {"logit_scale", "visual.pos_embed", "text.token_embed.weight", "text.pos_embed"} <= names
    assert "visual.blocks.0.ln_1.weight" in names and "visual.blocks.0.attn.qkv.bias" in names
    assert "visual.blocks.0.attn.qkv.weight" not in names and "visual.proj.weight" not in names


def test_base_preset_has_vit_b16_size():
    with torch.device("meta"):
        model = CLIP(get_model_config("base"))
    visual = sum(p.numel() for p in model.visual.parameters())
    assert 85e6 < visual < 88e6  # ViT-B/16: 86M
