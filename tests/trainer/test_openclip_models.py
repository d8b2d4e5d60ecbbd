"""Our OpenCLIP-layout models and OpenAI CLIP tokenizer against a fixture REAL open_clip made
(tests/fixtures/make_openclip_fixture.py): same embeddings to 1e-5, same token ids, same
parameter names, shapes and counts; loading, mismatches and export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.checkpoint import load_model, save_checkpoint
from trainer.configs import UserError, get_model_config, get_recipe
from trainer.model import model_from_config
from trainer.pretrained import export_open_clip, load_pretrained
from trainer.pretrained import main as export_main
from trainer.tokenizer import CaptionTokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openclip"
EOT = 511  # the fixture's end-of-text id (the largest of its vocabulary, as CLIP's)


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "expected.safetensors"))


def fixture_model(name: str):
    cfg = get_model_config(str(FIXTURE / f"{name}.json"), [f"text.eot_token_id={EOT}"])
    return model_from_config(cfg).eval()


@pytest.mark.parametrize(
    "name, weights",
    [
        ("vit", "vit.pt"),  # OpenCLIP's training checkpoint: {"state_dict": {"module.*": ...}}
        ("vit", "vit.safetensors"),
        ("vit", "vit-torchscript.pt"),  # a TorchScript archive, as OpenAI's
        ("rn", "rn.pt"),  # ModifiedResNet, QuickGELU
    ],
)
@torch.no_grad()
def test_embeddings_equal_open_clip_s(name, weights, expected):
    model = fixture_model(name)
    load_pretrained(model, str(FIXTURE / weights))
    images, texts = expected[f"{name}_images"], expected["texts"]
    for ours, theirs in (
        (model.encode_image(images, normalize=False), f"{name}_image_features"),
        (model.encode_text(texts, normalize=False), f"{name}_text_features"),
        (model.encode_image(images), f"{name}_image_embeddings"),
        (model.encode_text(texts), f"{name}_text_embeddings"),
    ):
        torch.testing.assert_close(ours, expected[theirs], atol=1e-5, rtol=0)


def test_randomly_initialized_model_does_not_match(expected):
    # the comparison above can fail: without the weights, the embeddings differ
    with torch.no_grad():
        ours = fixture_model("vit").encode_image(expected["vit_images"])
    assert (ours - expected["vit_image_embeddings"]).abs().max() > 1e-2


def test_openai_clip_tokenizer_ids_equal_open_clip_tokenize():
    fixture = json.loads((FIXTURE / "tokens.json").read_text())
    ids = CaptionTokenizer.openai_clip(77)(fixture["captions"]).tolist()
    for caption, ours, theirs in zip(fixture["captions"], ids, fixture["ids"], strict=True):
        assert ours == theirs, caption


def test_openai_clip_tokenizer_keeps_its_clean_up_through_a_checkpoint():
    tok = CaptionTokenizer.openai_clip(77)
    again = CaptionTokenizer.from_json(tok.to_json(), 77)
    caption = ["Tom &amp; Jerry ＦＵＬＬ"]  # only the clean-up turns these into "& full"
    assert again.clean == "openai-clip"
    assert torch.equal(again(caption), tok(caption))
    assert not torch.equal(CaptionTokenizer(tok.tokenizer, 77)(caption), tok(caption))


def test_named_architectures_have_open_clip_s_parameters():
    fixture = json.loads((FIXTURE / "architectures.json").read_text())
    for arch, count in fixture["parameters"].items():
        with torch.device("meta"):
            model = model_from_config(get_model_config(arch))
        assert sum(p.numel() for p in model.parameters()) == count, arch
        if arch in fixture["state_dict"]:
            shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
            assert shapes.pop("logit_scale") == [1]  # for FSDP2; export writes OpenCLIP's 0-dim
            shapes["logit_scale"] = []
            assert shapes == fixture["state_dict"][arch], arch


def test_quickgelu_names_and_openclip_models_default_to_openai_s_tokenizer():
    assert get_model_config("ViT-B-32-quickgelu").quick_gelu
    assert not get_model_config("ViT-B-32").quick_gelu
    assert get_recipe("RN50").tokenizer == "openai-clip"
    assert get_recipe(str(FIXTURE / "vit.json")).tokenizer == "openai-clip"
    assert get_recipe("tiny").tokenizer == "bpe"


def test_a_mismatched_checkpoint_is_one_line_naming_the_first_keys():
    with pytest.raises(UserError) as e:
        load_pretrained(fixture_model("rn"), str(FIXTURE / "vit.safetensors"))
    message = str(e.value)
    assert "\n" not in message
    assert (
        "missing: visual.bn1.weight" in message
        and "unexpected: transformer.resblocks.1.attn" in message
    )


def test_an_unsupported_openclip_config_names_its_key(tmp_path):
    config = json.loads((FIXTURE / "vit.json").read_text())
    config["vision_cfg"]["timm_model_name"] = "convnext_base"
    (tmp_path / "timm.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="vision_cfg.timm_model_name"):
        get_model_config(str(tmp_path / "timm.json"))


def test_pretrained_weights_need_an_openclip_architecture():
    with pytest.raises(UserError, match="not into our preset 'smoke'"):
        load_pretrained(model_from_config(get_model_config("smoke")), str(FIXTURE / "vit.pt"))


def our_checkpoint(tmp_path: Path, model_name: str, tokenizer: CaptionTokenizer) -> Path:
    overrides = [f"text.vocab_size={tokenizer.vocab_size}", f"text.eot_token_id={tokenizer.eot_id}"]
    cfg = get_model_config(model_name, overrides)
    torch.manual_seed(0)
    model = model_from_config(cfg)
    state = {
        "model_config": dataclasses.asdict(cfg),
        "tokenizer": tokenizer.to_json(),
        "model": model.state_dict(),
    }
    return save_checkpoint(tmp_path / "run", step=1, state=state)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@torch.no_grad()
def test_export_loads_back_into_the_same_model(tmp_path, expected, suffix):
    checkpoint = our_checkpoint(tmp_path, str(FIXTURE / "vit.json"), CaptionTokenizer.openai_clip())
    lines = export_open_clip(str(checkpoint), str(tmp_path / f"vit{suffix}"))
    assert any("open_clip.create_model_and_transforms('vit'" in line for line in lines)
    config = json.loads((tmp_path / "vit.json").read_text())  # not a built-in: its config beside
    assert config["vision_cfg"]["head_width"] == 16 and config["text_cfg"]["vocab_size"] == 49408
    ours, tokenizer = load_model(str(checkpoint), torch.device("cpu"))
    again = model_from_config(ours.cfg).eval()
    load_pretrained(again, str(tmp_path / f"vit{suffix}"))
    texts = tokenizer(["a photo of a cat", "Café"])
    torch.testing.assert_close(again.encode_text(texts), ours.encode_text(texts), atol=0, rtol=0)
    images = expected["vit_images"]
    torch.testing.assert_close(
        again.encode_image(images), ours.encode_image(images), atol=0, rtol=0
    )


def test_export_refuses_our_presets_and_other_tokenizers(tmp_path, capsys):
    from trainer.tokenizer import byte_tokenizer

    preset = our_checkpoint(tmp_path / "a", "smoke", CaptionTokenizer(byte_tokenizer(), 32))
    assert export_main(["--checkpoint", str(preset), "--output", str(tmp_path / "x.pt")]) == 2
    assert "our preset 'smoke', whose towers OpenCLIP cannot build" in capsys.readouterr().err
    byte = our_checkpoint(
        tmp_path / "b", str(FIXTURE / "vit.json"), CaptionTokenizer(byte_tokenizer())
    )
    with pytest.raises(UserError, match="another tokenizer than OpenAI CLIP's"):
        export_open_clip(str(byte), str(tmp_path / "y.pt"))
