"""The tiled InfoNCE and the sigmoid loss (dense and tiled) against the dense definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.cli import build_train_parser, run_config_from_args
from trainer.configs import UserError
from trainer.loss import batch_accuracy, caption_groups, clip_loss, siglip_loss


def features(b=10, d=6, seed=0):
    """Normalized image and text features, a scale and a bias, all leaves (float64)."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor([7.0], dtype=torch.float64)
    bias = torch.tensor([-3.0], dtype=torch.float64)
    return [t.requires_grad_() for t in (img, txt, scale, bias)]


def value_and_grads(loss_fn, leaves):
    loss = loss_fn(*leaves)
    grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad], allow_unused=True)
    return loss.detach(), grads


@pytest.mark.parametrize("tile", [1, 3, 10, 64])
def test_tiled_infonce_equals_dense_with_its_gradients(tile):
    leaves = features()
    dense = value_and_grads(lambda i, t, s, b: clip_loss(i, t, s), leaves)
    tiled = value_and_grads(lambda i, t, s, b: clip_loss(i, t, s, impl="tiled", tile=tile), leaves)
    torch.testing.assert_close(tiled[0], dense[0], atol=1e-12, rtol=0)
    for name, a, b in zip(["image", "text", "scale"], tiled[1], dense[1]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=name)


def test_tiled_infonce_keeps_no_logit_matrix_for_backward():
    b, d = 64, 4  # b * b logits would be 16x the features
    saved = []
    leaves = features(b, d)
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        clip_loss(*leaves[:3], impl="tiled", tile=8).backward()
    assert max(saved) <= b * d
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        clip_loss(*features(b, d)[:3]).backward()
    assert max(saved) == b * b  # the dense loss does (so the check can fail)


def test_sigmoid_loss_is_log_sigmoid_of_signed_pairs_per_image():
    img, txt, scale, bias = features(b=3, d=4)
    expected = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            expected -= F.logsigmoid(z * (scale * img[i] @ txt[j] + bias))
    loss = siglip_loss(img, txt, scale, bias)
    assert loss.item() == pytest.approx(expected.item() / 3, rel=1e-12)


@pytest.mark.parametrize("tile", [1, 4, 64])
def test_tiled_sigmoid_equals_dense_with_its_gradients(tile):
    leaves = features()
    dense = value_and_grads(lambda i, t, s, b: siglip_loss(i, t, s, b), leaves)
    tiled = value_and_grads(
        lambda i, t, s, b: siglip_loss(i, t, s, b, impl="tiled", tile=tile), leaves
    )
    torch.testing.assert_close(tiled[0], dense[0], atol=1e-12, rtol=0)
    for name, a, b in zip(["image", "text", "scale", "bias"], tiled[1], dense[1]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=name)


def test_sigmoid_loss_starts_at_siglip_temperature_and_bias():
    args = build_train_parser().parse_args(
        ["--data", "a.tar", "--output", "r", "--loss", "sigmoid"]
    )
    cfg = run_config_from_args(args)
    assert cfg.loss.kind == "sigmoid"
    assert cfg.model.init_logit_scale == pytest.approx(math.log(10))
    assert cfg.model.init_logit_bias == -10


@pytest.mark.parametrize("max_block", [1, 7, 10**6])  # one row per block, 3 rows, all at once
def test_batch_accuracy_in_row_blocks_counts_the_nearest_caption(max_block):
    img, txt, _, _ = features(b=6, d=4)
    txt = txt.detach().clone()
    txt[[1, 4]] = txt[[4, 1]]  # images 1 and 4 now miss their captions
    expected = ((img @ txt.T).argmax(dim=1) == torch.arange(6)).float().mean().item()
    assert expected < 1
    assert batch_accuracy(img.detach(), txt, max_block=max_block) == pytest.approx(expected)


# --positives captions: identical captions are positives of each other
GROUPS = torch.tensor([0, 1, 0, 2, 3, 1, 0, 4, 5, 6])  # captions 0, 2, 6 alike; 1 and 5 alike


def test_caption_groups_are_identical_token_sequences():
    texts = torch.tensor([[1, 5, 2, 0], [1, 6, 2, 0], [1, 5, 2, 0], [1, 5, 6, 2]])
    groups = caption_groups(texts)
    assert groups[0] == groups[2] and len(set(groups.tolist())) == 3


def test_grouped_infonce_is_the_log_probability_of_all_positives():
    img, txt, scale, _ = features()
    loss = clip_loss(img, txt, scale, groups=GROUPS)
    same = (GROUPS[:, None] == GROUPS[None, :]).double()  # (b, b)
    p_image = (scale * img @ txt.T).softmax(dim=1)  # (b, b) image -> text
    p_text = (scale * txt @ img.T).softmax(dim=1)
    expected = -((p_image * same).sum(1).log().mean() + (p_text * same).sum(1).log().mean()) / 2
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)
    assert loss < clip_loss(img, txt, scale)  # the alike captions no longer count against


@pytest.mark.parametrize("impl", ["dense", "tiled"])
def test_grouped_infonce_with_distinct_captions_is_infonce(impl):
    leaves = features()
    plain = value_and_grads(lambda i, t, s, b: clip_loss(i, t, s), leaves)
    grouped = value_and_grads(
        lambda i, t, s, b: clip_loss(i, t, s, impl=impl, tile=3, groups=torch.arange(10)),
        leaves,
    )
    torch.testing.assert_close(grouped[0], plain[0], atol=1e-12, rtol=0)
    for a, b in zip(grouped[1], plain[1]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("tile", [1, 3, 10, 64])
def test_tiled_grouped_infonce_equals_dense_with_its_gradients(tile):
    leaves = features()
    dense = value_and_grads(lambda i, t, s, b: clip_loss(i, t, s, groups=GROUPS), leaves)
    tiled = value_and_grads(
        lambda i, t, s, b: clip_loss(i, t, s, impl="tiled", tile=tile, groups=GROUPS), leaves
    )
    torch.testing.assert_close(tiled[0], dense[0], atol=1e-12, rtol=0)
    for name, a, b in zip(["image", "text", "scale"], tiled[1], dense[1]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=name)


def test_caption_positives_are_refused_with_the_sigmoid_loss():
    argv = ["--data", "a.tar", "--output", "r", "--loss", "sigmoid", "--positives", "captions"]
    with pytest.raises(UserError, match="InfoNCE"):
        run_config_from_args(build_train_parser().parse_args(argv))
