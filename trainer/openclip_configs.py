"""OpenCLIP's model configurations, by name or as a config JSON file, as our ModelConfig.

    cfg = openclip_model_config("ViT-B-32")           # family "open_clip": OpenCLIP's layout
    cfg = openclip_model_config("ViT-B-32-quickgelu")  # OpenAI's weights were trained with QuickGELU
    cfg = openclip_model_config("configs/my-vit.json")  # any OpenCLIP-style config file

The table holds the hyper-parameters of the architectures OpenCLIP names (embed_dim,
vision_cfg, text_cfg, as in its model_configs/*.json); a `-quickgelu` suffix sets
`quick_gelu`. A model of the "open_clip" family has OpenCLIP's parameter names and numerics
(trainer/openclip_models.py), so OpenCLIP and OpenAI checkpoints load into it and it exports
to a file `open_clip.create_model_and_transforms(name, pretrained=PATH)` loads.

Only towers we build are accepted: a ViT (learnable position embeddings, class token or mean
pooling) or a ModifiedResNet image tower, and the CLIP text transformer (causal, pooled at the
end-of-text token). timm / Hugging Face towers, attentional pooling, layer scale and the other
variants are refused with the key that asks for them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trainer.configs import ModelConfig, TextConfig, UserError, VisionConfig

_TEXT_512 = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
_TEXT_768 = {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}

# OpenCLIP's configurations of the architectures people score and fine-tune with.
ARCHITECTURES: dict[str, dict] = {
    "ViT-B-32": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": _TEXT_512,
    },
    "ViT-B-32-256": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 256, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": _TEXT_512,
    },
    "ViT-B-16": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": _TEXT_512,
    },
    "ViT-L-14": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": _TEXT_768,
    },
    "ViT-L-14-336": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": _TEXT_768,
    },
    "ViT-H-14": {
        "embed_dim": 1024,
        "vision_cfg": {
            "image_size": 224,
            "layers": 32,
            "width": 1280,
            "head_width": 80,
            "patch_size": 14,
        },
        "text_cfg": {**_TEXT_512, "width": 1024, "heads": 16, "layers": 24},
    },
    "RN50": {
        "embed_dim": 1024,
        "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64, "patch_size": None},
        "text_cfg": _TEXT_512,
    },
    "RN101": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": [3, 4, 23, 3], "width": 64, "patch_size": None},
        "text_cfg": _TEXT_512,
    },
}
QUICKGELU = "-quickgelu"

# keys we read; others must hold OpenCLIP's default (a different value asks for another tower)
_VISION_KEYS = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size"}
_VISION_KEYS |= {"patch_dropout", "pool_type"}
_VISION_DEFAULTS = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "timm_model_name": None,
}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_TEXT_DEFAULTS = {
    "hf_model_name": None,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "ls_init_value": None,
    "embed_cls": False,
    "pad_id": 0,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale"}
_TOP_DEFAULTS = {"custom_text": False, "init_logit_bias": None, "nonscalar_logit_scale": False}


def list_architectures() -> list[str]:
    return sorted([*ARCHITECTURES, *(name + QUICKGELU for name in ARCHITECTURES)])


def is_openclip_model(name: str) -> bool:
    """An OpenCLIP architecture name or a config JSON file (rather than one of our presets)."""
    return name.removesuffix(QUICKGELU) in ARCHITECTURES or name.endswith(".json")


def openclip_model_config(name: str) -> ModelConfig:
    """Our ModelConfig of an OpenCLIP architecture name or config JSON file."""
    if name.endswith(".json"):
        path = Path(name)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read OpenCLIP model config {name}: {e}") from None
        return from_openclip_dict(raw, path.stem)
    base = name.removesuffix(QUICKGELU)
    if base not in ARCHITECTURES:
        raise UserError(f"unknown OpenCLIP architecture {name!r}; known: {list_architectures()}")
    raw = json.loads(json.dumps(ARCHITECTURES[base]))  # a fresh copy
    if name.endswith(QUICKGELU):
        raw["quick_gelu"] = True
    return from_openclip_dict(raw, name)


def _check_keys(d: dict, known: set[str], defaults: dict, where: str) -> None:
    if not isinstance(d, dict):
        raise UserError(f"OpenCLIP config: {where} must be an object")
    for key, value in d.items():
        if key in known:
            continue
        if key not in defaults:
            raise UserError(f"OpenCLIP config: {where}.{key} is not a setting we know")
        if value != defaults[key]:
            raise UserError(
                f"OpenCLIP config: {where}.{key}={value!r} is not supported (we build ViT and "
                f"ModifiedResNet image towers and the CLIP text transformer)"
            )


def from_openclip_dict(raw: dict, name: str) -> ModelConfig:
    """An OpenCLIP model config (the JSON's dict) -> our ModelConfig of the open_clip family."""
    _check_keys(raw, _TOP_KEYS, _TOP_DEFAULTS, "config")
    v, t = raw.get("vision_cfg", {}), raw.get("text_cfg", {})
    _check_keys(v, _VISION_KEYS, _VISION_DEFAULTS, "vision_cfg")
    _check_keys(t, _TEXT_KEYS, _TEXT_DEFAULTS, "text_cfg")
    if "embed_dim" not in raw:
        raise UserError("OpenCLIP config: embed_dim is missing")
    width, head_width = v.get("width", 768), v.get("head_width", 64)
    layers = v.get("layers", 12)
    pool = {"tok": "cls", "avg": "mean"}.get(v.get("pool_type", "tok"))
    if pool is None:
        raise UserError(f"OpenCLIP config: vision_cfg.pool_type={v['pool_type']!r} not supported")
    if isinstance(layers, (list, tuple)):  # ModifiedResNet: bottleneck blocks per stage
        if len(layers) != 4:
            raise UserError("OpenCLIP config: a ModifiedResNet has 4 stages (vision_cfg.layers)")
        vision = VisionConfig(
            kind="resnet",
            image_size=v.get("image_size", 224),
            width=width,
            layers=sum(layers),
            resnet_layers=tuple(int(n) for n in layers),
            heads=width * 32 // head_width,  # of the attention pool, over width * 32 channels
            stages=4,
        )
    else:
        vision = VisionConfig(
            kind="vit",
            image_size=v.get("image_size", 224),
            patch_size=v.get("patch_size", 16),
            width=width,
            layers=layers,
            heads=width // head_width,
            mlp_ratio=v.get("mlp_ratio", 4.0),
            pool=pool,
            patch_dropout=v.get("patch_dropout", 0.0),
        )
    text = TextConfig(
        vocab_size=t.get("vocab_size", 49408),
        context_length=t.get("context_length", 77),
        width=t.get("width", 512),
        heads=t.get("heads", 8),
        layers=t.get("layers", 12),
        mlp_ratio=t.get("mlp_ratio", 4.0),
    )
    return ModelConfig(
        name=name,
        family="open_clip",
        quick_gelu=bool(raw.get("quick_gelu", False)),
        embed_dim=raw["embed_dim"],
        vision=vision,
        text=text,
        init_logit_scale=raw.get("init_logit_scale", math.log(1 / 0.07)),
    )


def to_openclip_dict(cfg: ModelConfig) -> dict:
    """Our open_clip-family ModelConfig -> an OpenCLIP model config (for open_clip's
    add_model_config), the inverse of `from_openclip_dict`."""
    v, t = cfg.vision, cfg.text
    if v.kind == "resnet":
        vision = {
            "image_size": v.image_size,
            "layers": list(v.resnet_layers),
            "width": v.width,
            "head_width": v.width * 32 // v.heads,
            "patch_size": None,
        }
    else:
        vision = {
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "head_width": v.width // v.heads,
            "mlp_ratio": v.mlp_ratio,
            "patch_size": v.patch_size,
            "pool_type": "tok" if v.pool == "cls" else "avg",
        }
    text = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
    }
    out = {"embed_dim": cfg.embed_dim, "vision_cfg": vision, "text_cfg": text}
    if cfg.quick_gelu:
        out["quick_gelu"] = True
    return out
