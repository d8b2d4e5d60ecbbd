"""Scoring with an OpenCLIP architecture and OpenCLIP-format weights (--score-model,
--score-pretrained): the scores are a plain forward pass of that model, and the manifest's
scorer names the architecture and the weights' sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pipeline.jobs.curate import main as curate
from pipeline.jobs.score import main as score
from tests.pipeline.test_score import digit_tars, shard_rows, tar_samples
from tests.trainer.test_finetune import small_openclip_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    return small_openclip_weights(tmp_path_factory.mktemp("openclip"))


@pytest.fixture(scope="module")
def tars(tmp_path_factory) -> Path:
    return digit_tars(tmp_path_factory.mktemp("digits"), 12)


def curate_args(tars: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--input", str(tars), "--input-format", "webdataset", "--output", str(out),
        "--recipe", "none", "--image-size", "32", "--encode-format", "png", *extra,
    ]  # fmt: skip


def test_openclip_scores_are_its_forward_pass_and_the_manifest_names_it(tars, weights, tmp_path):
    config, pretrained = weights
    out = tmp_path / "out"
    flags = ["--score-model", str(config), "--score-pretrained", str(pretrained)]
    assert curate(curate_args(tars, out, *flags)) == 0
    scorer = json.loads((out / "manifest.json").read_text())["scorer"]
    assert scorer["family"] == "open_clip" and scorer["model"] == str(config)
    assert scorer["sha256"] == hashlib.sha256(pretrained.read_bytes()).hexdigest()
    assert scorer["image_size"] == 32 and scorer["context_length"] == 77

    from trainer.pretrained import load_openclip
    from trainer.transforms import decode_image, normalize, resize_center_crop

    model, tokenizer = load_openclip(str(config), str(pretrained))
    rows, samples = shard_rows(out), tar_samples(out)
    assert len(rows) == 12
    pixels = torch.stack(
        [resize_center_crop(decode_image(samples[r["key"]]["png"]), 32) for r in rows]
    )
    with torch.no_grad():
        images = model.encode_image(normalize(pixels))
        texts = model.encode_text(tokenizer([r["caption"] for r in rows]))
    expected = (images * texts).sum(dim=-1)
    torch.testing.assert_close(
        torch.tensor([r["clip_score"] for r in rows]), expected, atol=1e-5, rtol=0
    )

    rescored = tmp_path / "rescored"  # webpairs score takes the same flags
    assert curate(curate_args(tars, rescored)) == 0
    assert score(["--input", str(rescored), *flags]) == 0
    again = {r["key"]: r["clip_score"] for r in shard_rows(rescored)}
    assert again == {r["key"]: r["clip_score"] for r in rows}
    assert json.loads((rescored / "manifest.json").read_text())["scorer"] == scorer


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--score-pretrained", "w.pt"], "--score-pretrained needs --score-model"),
        (["--score-model", "ViT-B-32", "--stages", "clip_score"], "needs its weights"),
        (["--score-model", "ViT-B-32", "--score-pretrained", "PRETRAINED"], "does not fit"),
    ],
)
def test_score_model_mistakes_are_one_line(tars, weights, tmp_path, capsys, flags, message):
    flags = [str(weights[1]) if f == "PRETRAINED" else f for f in flags]
    assert curate(curate_args(tars, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
