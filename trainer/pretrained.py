"""Other people's checkpoints in, ours out: OpenCLIP and OpenAI weights loaded into a model of
the open_clip family (trainer/openclip_models.py), and our checkpoints exported for open_clip.

    webpairs train --model ViT-B-32-quickgelu --pretrained ViT-B-32.pt ...   # OpenAI's archive
    webpairs train --model ViT-B-32 --pretrained open_clip_pytorch_model.bin --lock-image ...
    webpairs export --format open_clip --checkpoint runs/b32 --output b32.safetensors

    model, tokenizer = load_openclip("ViT-B-32", "open_clip_model.safetensors")
    import open_clip   # elsewhere, in a venv with open_clip:
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="b32.safetensors")

Read: `.safetensors`; `.pt` / `.pth` / `.bin` with torch.load (a state dict, or OpenCLIP's
training checkpoint {"state_dict": {"module.*": ...}}); OpenAI's TorchScript archives (their
half-precision weights become float32). A key mismatch is one line naming the first keys.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from trainer.configs import ModelConfig, UserError, get_model_config
from trainer.model import interpolate_pos_embed, model_from_config
from trainer.openclip_configs import ARCHITECTURES, QUICKGELU, to_openclip_dict
from trainer.tokenizer import OPENAI_CLIP, CaptionTokenizer

log = logging.getLogger(__name__)

# in TorchScript archives beside the weights: OpenAI's ints, the text tower's causal mask
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def is_torchscript(path: str | Path) -> bool:
    """A TorchScript archive (OpenAI's CLIP checkpoints): a zip with code and constants.pkl."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("/constants.pkl") for name in z.namelist())


def read_weights(path: str | Path) -> dict:
    """The file's contents: a state dict (OpenCLIP's, OpenAI's, any), or one of our own
    checkpoints as saved (a dict with "version" and "model")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained weights {path} do not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if is_torchscript(path):
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": their format
                warnings.simplefilter("ignore", DeprecationWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
            return {k: v for k, v in state.items() if k not in _OPENAI_EXTRAS}
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many kinds for a file they cannot read
        raise UserError(f"cannot read pretrained weights {path}: {e}") from None


def openclip_state_dict(contents: dict) -> dict[str, torch.Tensor]:
    """A state dict as OpenCLIP's load_state_dict sees it: unwrapped from {"state_dict": ...}
    and without DDP's "module." prefix."""
    state = contents.get("state_dict", contents)
    if not isinstance(state, dict) or not state:
        raise UserError("pretrained weights hold no state dict")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`state` into `model` (strictly), with image position embeddings resized to the model's
    resolution; a mismatch is one UserError naming the first missing / unexpected keys."""
    own = model.state_dict()
    state = dict(state)
    for key in ("visual.positional_embedding", "visual.attnpool.positional_embedding"):
        if key in state and key in own and state[key].shape != own[key].shape:
            grid = round((own[key].shape[0] - 1) ** 0.5)
            log.info("resizing %s from %s to %s", key, tuple(state[key].shape), own[key].shape)
            state[key] = interpolate_pos_embed(state[key][None].float(), (grid, grid))[0]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].numel() != own[k].numel()
    ]
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{what}: {', '.join(keys[:3])}{more}")
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        raise UserError(f"{source} does not fit model {name}: {'; '.join(parts)}")
    model.load_state_dict(state)


def load_pretrained(model: nn.Module, path: str) -> None:
    """OpenCLIP / OpenAI weights from `path` into `model` (an open_clip-family model)."""
    cfg: ModelConfig = model.cfg
    check_openclip_family(cfg)
    if is_torchscript(path) and not cfg.quick_gelu:
        log.warning(
            "%s looks like OpenAI's checkpoint, trained with QuickGELU: use --model %s%s",
            path,
            cfg.name,
            QUICKGELU,
        )
    load_weights(model, openclip_state_dict(read_weights(path)), str(path))
    log.info("loaded pretrained weights %s", path)


def check_openclip_family(cfg: ModelConfig) -> None:
    if cfg.family != "open_clip":
        raise UserError(
            f"--pretrained loads OpenCLIP / OpenAI weights into an OpenCLIP architecture "
            f"(--model ViT-B-32, RN50, a config .json), not into our preset {cfg.name!r}; "
            f"to continue one of our runs, give its checkpoint"
        )


def load_openclip(arch: str, path: str, device: str | torch.device = "cpu"):
    """(model in eval mode, OpenAI CLIP tokenizer) of an OpenCLIP architecture with the weights
    of `path`: what scoring uses for --score-model / --score-pretrained."""
    cfg = get_model_config(arch)
    tokenizer = CaptionTokenizer.openai_clip(cfg.text.context_length)
    if cfg.text.vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"model {arch} has a vocabulary of {cfg.text.vocab_size}, OpenAI CLIP's tokenizer "
            f"{tokenizer.vocab_size}"
        )
    cfg.text.eot_token_id, cfg.text.pad_token_id = tokenizer.eot_id, tokenizer.pad_id
    model = model_from_config(cfg)
    load_pretrained(model, path)
    return model.to(device).eval(), tokenizer


def export_open_clip(checkpoint: str, output: str) -> list[str]:
    """One of our checkpoints (an OpenCLIP architecture trained here) as a file open_clip
    loads: its state dict (.safetensors, or torch.save for .pt / .bin), logit scale 0-dim as
    OpenCLIP's; for an architecture OpenCLIP does not ship, its config JSON beside it.
    -> lines that say how to load it."""
    from trainer.checkpoint import load_model

    model, tokenizer = load_model(checkpoint, torch.device("cpu"))
    cfg = model.cfg
    if cfg.family != "open_clip":
        raise UserError(
            f"{checkpoint} holds our preset {cfg.name!r}, whose towers OpenCLIP cannot build; "
            f"train an OpenCLIP architecture (--model ViT-B-32, RN50, a config .json) to export "
            f"to open_clip (our checkpoints load anywhere with trainer.checkpoint.load_model)"
        )
    if tokenizer.clean != OPENAI_CLIP:
        raise UserError(
            f"{checkpoint} was trained with another tokenizer than OpenAI CLIP's: OpenCLIP would "
            f"tokenize (and pool) its captions differently; train with --tokenizer openai-clip"
        )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for key in ("logit_scale", "logit_bias"):
        if key in state:
            state[key] = state[key].reshape(())
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out))
    else:
        torch.save(state, out)
    config = to_openclip_dict(cfg)
    base = cfg.name.removesuffix(QUICKGELU)
    builtin = base in ARCHITECTURES and config == to_openclip_dict(get_model_config(cfg.name))
    name = cfg.name
    lines = [f"wrote {out} ({sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters)"]
    if not builtin:
        name = out.stem
        path = out.with_suffix(".json")
        path.write_text(json.dumps(config, indent=1) + "\n")
        lines.append(f"wrote {path}: its OpenCLIP model config")
        lines.append(f"open_clip.add_model_config({str(path)!r})")
    lines.append(f"open_clip.create_model_and_transforms({name!r}, pretrained={str(out)!r})")
    return lines


def main(argv: list[str] | None = None, prog: str = "webpairs export") -> int:
    p = argparse.ArgumentParser(
        prog=prog, description="Write a trained checkpoint in another project's format."
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_FILE")
    p.add_argument(
        "--format",
        choices=["open_clip"],
        default="open_clip",
        help="open_clip: a state dict open_clip.create_model_and_transforms(ARCH, pretrained=PATH) "
        "loads",
    )
    p.add_argument("--output", required=True, metavar="PATH", help=".safetensors, .pt or .bin")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        lines = export_open_clip(args.checkpoint, args.output)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
