"""Fine-tuning: a run that starts from OpenCLIP-format weights or one of our checkpoints, with a
tower locked (LiT) or a learning rate per tower."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from trainer.cli import main
from trainer.configs import UserError, get_model_config
from trainer.model import create_model, model_from_config
from trainer.pretrained import export_open_clip, read_weights
from trainer.tokenizer import CaptionTokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openclip"


@pytest.fixture(scope="module")
def openclip_weights(tmp_path_factory) -> tuple[Path, Path]:
    return small_openclip_weights(tmp_path_factory.mktemp("openclip"))


def small_openclip_weights(folder: Path) -> tuple[Path, Path]:
    """(an OpenCLIP config .json, weights in OpenCLIP's format): the fixture's small ViT with
    OpenAI CLIP's vocabulary, exported from one of our checkpoints."""
    tokenizer = CaptionTokenizer.openai_clip()
    cfg = get_model_config(str(FIXTURE / "vit.json"), [f"text.vocab_size={tokenizer.vocab_size}"])
    cfg.text.eot_token_id = tokenizer.eot_id
    torch.manual_seed(0)
    state = {
        "model_config": dataclasses.asdict(cfg),
        "tokenizer": tokenizer.to_json(),
        "model": model_from_config(cfg).state_dict(),
    }
    checkpoint = save_checkpoint(folder / "run", step=1, state=state)
    export_open_clip(str(checkpoint), str(folder / "small-vit.safetensors"))
    return folder / "small-vit.json", folder / "small-vit.safetensors"


def train(shards, run_dir, *extra) -> dict:
    argv = ["--data", f"{shards[0].parent}/*.tar", "--output", str(run_dir)]
    argv += ["--batch-size", "8", "--workers", "0", "--steps", "2", "--lr", "1e-3", *extra]
    assert main(argv) == 0
    return load_checkpoint(list_checkpoints(run_dir)[-1][1])


def changed(before: dict, after: dict, prefix: str, tower) -> list[bool]:
    return [not torch.equal(before[k], after[k]) for k in after if tower(k) == prefix]


def openclip_tower(key: str) -> str:
    if key.startswith("visual."):
        return "image"
    return "shared" if key.startswith("logit_") else "text"


def test_lock_image_trains_only_the_text_tower_from_openclip_weights(
    digit_shards, tmp_path, openclip_weights
):
    config, weights = openclip_weights
    final = train(
        digit_shards, tmp_path / "run", "--model", str(config), "--pretrained", str(weights),
        "--lock-image",
    )  # fmt: skip
    start = read_weights(weights)
    image = changed(start, final["model"], "image", openclip_tower)
    text = changed(start, final["model"], "text", openclip_tower)
    assert image and not any(image)  # every image weight exactly as loaded
    assert all(text)  # every text weight moved
    trainable = sum(1 for k in final["model"] if openclip_tower(k) != "image")
    assert len(final["optimizer"]["state"]) == trainable  # no optimizer state for the locked
    assert CaptionTokenizer.from_json(final["tokenizer"]).clean == "openai-clip"  # its default


def test_lock_text_and_a_learning_rate_per_tower_from_our_checkpoint(digit_shards, tmp_path):
    first = train(digit_shards, tmp_path / "a", "--model", "smoke")
    ours = list_checkpoints(tmp_path / "a")[-1][1]
    final = train(
        digit_shards, tmp_path / "b", "--pretrained", str(ours), "--lock-text",
        "--lr-image", "5e-4", "--warmup", "1",
    )  # fmt: skip

    def tower(key):
        return "image" if key.startswith("visual.") else "text" if key.startswith("text.") else ""

    assert all(changed(first["model"], final["model"], "image", tower))
    assert not any(changed(first["model"], final["model"], "text", tower))
    assert {g.get("lr_scale") for g in final["optimizer"]["param_groups"]} == {0.5, None}
    assert final["model_config"]["name"] == "smoke"  # the checkpoint's model, not --model's


def test_unlocked_groups_and_frozen_batchnorm_statistics():
    model = model_from_config(get_model_config(str(FIXTURE / "vit.json")))
    model.lock_image_tower(unlocked_groups=2)  # the last block with ln_post, and the projection
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "visual" in n}
    assert trainable == {"visual.proj", "visual.ln_post.weight", "visual.ln_post.bias"} | {
        n for n, _ in model.named_parameters() if n.startswith("visual.transformer.resblocks.1.")
    }
    rn = model_from_config(get_model_config(str(FIXTURE / "rn.json")))
    rn.lock_image_tower(freeze_bn_stats=True)
    rn.train()
    norms = [m for m in rn.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and rn.transformer.training
    with pytest.raises(UserError, match="locked whole"):
        rn.lock_image_tower(unlocked_groups=1)
    smoke = create_model("smoke")
    smoke.lock_text_tower(unlocked_layers=1)  # the projection only
    assert [n for n, p in smoke.text.named_parameters() if p.requires_grad] == ["proj.weight"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lock-image-unlocked-groups", "1"], "--lock-image-unlocked-groups needs --lock-image"),
        (["--lr-text", "0"], "--lr-text must be > 0"),
        (["--pretrained", str(FIXTURE / "vit.pt")], "not into our preset 'smoke'"),
    ],
)
def test_fine_tuning_mistakes_are_one_line(digit_shards, tmp_path, capsys, extra, message):
    argv = ["--data", f"{digit_shards[0].parent}/*.tar", "--output", str(tmp_path / "run")]
    argv += ["--model", "smoke", "--workers", "0", "--steps", "1", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
