"""Ours -> `webpairs export --format open_clip` -> REAL open_clip: the same embeddings.

    PYTHONPATH=. .venv/bin/python bench/openclip_roundtrip.py --openclip-python /tmp/openclip-venv/bin/python

Two models: the small ViT config of tests/fixtures/openclip/vit.json (with OpenAI CLIP's
vocabulary) trained here for a few steps on random shards by `webpairs train`, and ViT-B-32
with seeded random weights (a built-in architecture: no config file travels with it). Each is
exported (.safetensors and .pt), loaded by `open_clip.create_model_and_transforms(name,
pretrained=PATH)` in open_clip's own venv (torchvision cannot live beside our torch), and
its image and text embeddings of fixed inputs are compared with ours; the captions go through
open_clip's tokenizer there and ours here. Prints one line per model and format.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file, save_file

from trainer.checkpoint import list_checkpoints, load_model, save_checkpoint
from trainer.cli import main as train
from trainer.configs import get_model_config
from trainer.model import model_from_config
from trainer.pretrained import main as export
from trainer.tokenizer import CaptionTokenizer

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "a photo of a cat",
    "Café crème &amp; ＦＵＬＬＷＩＤＴＨ 🐶",
    "two dogs playing in the snow",
]

OPENCLIP_SIDE = """
import json, sys, open_clip, torch
from safetensors.torch import load_file, save_file
name, weights, config, inputs, out = sys.argv[1:6]
if config != "-":
    open_clip.add_model_config(config)
model, _, _ = open_clip.create_model_and_transforms(name, pretrained=weights)
model.eval()
tensors = load_file(inputs)
captions = json.loads(open(inputs + ".json").read())
with torch.no_grad():
    save_file({
        "image": model.encode_image(tensors["images"], normalize=True).contiguous(),
        "text": model.encode_text(open_clip.get_tokenizer(name)(captions), normalize=True).contiguous(),
    }, out)
"""


def random_shards(folder: Path, n: int = 64) -> str:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=32, verbose=0) as sink:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
            sink.write({"__key__": f"{i:05d}", "png": buf.getvalue(), "txt": f"picture {i}"})
    return str(folder / "*.tar")


def trained_small_vit(work: Path) -> Path:
    config = ROOT / "tests/fixtures/openclip/vit.json"
    argv = ["--data", random_shards(work / "shards"), "--output", str(work / "small")]
    argv += ["--model", str(config), "--steps", "5"]
    argv += ["--batch-size", "8", "--workers", "0", "--log-every", "5"]
    assert train(argv) == 0
    return list_checkpoints(work / "small")[-1][1]


def random_b32(work: Path) -> Path:
    tokenizer = CaptionTokenizer.openai_clip()
    cfg = get_model_config("ViT-B-32")
    cfg.text.eot_token_id = tokenizer.eot_id
    torch.manual_seed(0)
    model = model_from_config(cfg)
    state = {
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(cfg),
        "tokenizer": tokenizer.to_json(),
    }
    return save_checkpoint(work / "b32", 0, state)


def compare(checkpoint: Path, work: Path, python: str) -> list[str]:
    model, tokenizer = load_model(str(checkpoint), torch.device("cpu"))
    size = model.cfg.vision.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = {"image": model.encode_image(images), "text": model.encode_text(tokenizer(CAPTIONS))}
    inputs = work / f"{model.cfg.name.replace('/', '_')}-inputs.safetensors"
    save_file({"images": images}, str(inputs))
    Path(str(inputs) + ".json").write_text(json.dumps(CAPTIONS))
    lines = []
    for suffix in (".safetensors", ".pt"):
        out = work / f"export-{Path(model.cfg.name).stem}{suffix}"
        assert export(["--checkpoint", str(checkpoint), "--output", str(out)]) == 0
        config = out.with_suffix(".json")
        name = out.stem if config.exists() else model.cfg.name
        theirs_path = work / "theirs.safetensors"
        subprocess.run(
            [python, "-c", OPENCLIP_SIDE, name, str(out), str(config) if config.exists() else "-",
             str(inputs), str(theirs_path)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        theirs = load_file(str(theirs_path))
        diff = {k: (ours[k] - theirs[k]).abs().max().item() for k in ours}
        lines.append(
            f"{model.cfg.name:<12} {suffix:<13} open_clip.create_model_and_transforms({name!r}): "
            f"max |image diff| {diff['image']:.2e}, max |text diff| {diff['text']:.2e}"
        )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--openclip-python", default="/tmp/openclip-venv/bin/python")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines = compare(trained_small_vit(work), work, args.openclip_python)
        lines += compare(random_b32(work), work, args.openclip_python)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
