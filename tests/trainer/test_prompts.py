"""Zero-shot prompts: several names per class, templates learnt from captions, and the prompts
recorded beside the figures they gave."""

import json

import pytest
import torch

from trainer.configs import UserError
from trainer.evaluate import zeroshot_classifier
from trainer.prompts import Prompts, read_classnames, templates_from_captions
from trainer.tokenizer import CaptionTokenizer, byte_tokenizer

TOKENIZER = CaptionTokenizer(byte_tokenizer(), context_length=32)


def test_classnames_list_several_names_per_class(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("zero | 0\none|1\n\ntwo\n")
    assert read_classnames(str(path)) == [["zero", "0"], ["one", "1"], ["two"]]
    assert read_classnames("zero|0,one|1") == [["zero", "0"], ["one", "1"]]
    with pytest.raises(UserError, match="has no name"):
        read_classnames("zero,|,two")


def test_every_template_with_every_name_and_the_column_is_their_mean():
    prompts = Prompts([["seven", "7"], ["one"]], ["{}", "digit {}"])
    assert prompts.texts(0) == ["seven", "digit seven", "7", "digit 7"]

    # text embedding: (1, says "digit", says "7"), so each prompt's share of the mean shows
    def features(text):
        return torch.tensor([1.0, "digit" in text, "7" in text])

    model = type("TextModel", (), {})()
    model.encode_text = lambda ids: torch.stack([features(TOKENIZER.decode(r)) for r in ids])
    column = zeroshot_classifier(model, TOKENIZER, prompts, "cpu")[:, 0]  # (D,)
    F = torch.nn.functional
    expected = F.normalize(sum(F.normalize(features(t), dim=0) for t in prompts.texts(0)), dim=0)
    assert torch.allclose(column, expected)
    assert not torch.allclose(column, F.normalize(features("seven"), dim=0))


def test_templates_from_captions_keep_the_phrasings_shared_by_classes():
    names = [["zero", "0"], ["one", "1"], ["two", "2"], ["three", "3"]]
    captions = (
        ["a handwritten digit zero", "a handwritten digit one", "a handwritten digit two"] * 3
        + ["digit 1", "digit three", "Digit  2"]  # case and spaces do not matter
        + ["one of a kind shoe"] * 20  # seen with one class only: its context, not a phrasing
        + ["IMG_0001.jpg", "zero or one", "two"]  # no name, two names, the bare name (1 class)
    )
    assert templates_from_captions(captions, names) == ["a handwritten digit {}", "digit {}"]
    assert templates_from_captions(captions, names, limit=1) == ["a handwritten digit {}"]
    assert templates_from_captions(["nothing here"], names) == []


def test_eval_takes_its_default_templates_from_the_training_captions_never_validation_pairs(
    tmp_path, make_shards, capsys
):
    from tests.trainer.conftest import NAMES, digit_image, digit_samples, write_shards
    from trainer.cli import main as train_main
    from trainer.evaluate import main as eval_main
    from trainer.validation import in_validation

    samples = digit_samples(64)
    for s in samples:  # validation pairs are captioned in a phrasing of their own
        name = s["txt"].rsplit(" ", 1)[1]
        s["txt"] = f"held out {name}" if in_validation(s["__key__"], 0.5) else f"my {name} drawn"
    shards = write_shards(tmp_path / "shards", samples, per_shard=16)

    def train(run_dir, *extra):
        argv = ["--data", f"{shards[0].parent}/*.tar", "--output", str(run_dir), "--steps", "1"]
        argv += ["--model", "smoke", "--batch-size", "8", "--workers", "0", *extra]
        assert train_main(argv) == 0

    run_dir = tmp_path / "run"
    train(run_dir)
    train(tmp_path / "val", "--val-fraction", "0.5")  # validation pairs: not recorded
    recorded = (tmp_path / "val" / "captions.txt").read_text().splitlines()
    training = [s["txt"] for s in samples if not in_validation(s["__key__"], 0.5)]
    assert recorded == training and 16 <= len(training) <= 48
    assert any(
        c.startswith("held out") for c in (run_dir / "captions.txt").read_text().splitlines()
    )

    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(20):  # a folder per class name
        folder = tmp_path / "heldout" / NAMES[digits.target[i]]
        folder.mkdir(parents=True, exist_ok=True)
        digit_image(digits.images[i]).save(folder / f"{i}.png")
    evaluate = ["--zeroshot", str(tmp_path / "heldout"), "--json"]
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(tmp_path / "val"), *evaluate]) == 0
    prompts = json.loads(capsys.readouterr().out.splitlines()[-1])["prompts"]
    assert prompts["templates"] == ["my {} drawn"]  # never "held out {}"
    assert prompts["templates_from"].endswith("captions.txt")
    checkpoint = next((run_dir / "checkpoints").glob("step-*.pt"))
    assert eval_main(["--checkpoint", str(checkpoint), *evaluate]) == 0  # a checkpoint file too
    prompts = json.loads(capsys.readouterr().out.splitlines()[-1])["prompts"]
    assert set(prompts["templates"]) == {"my {} drawn", "held out {}"}
    (tmp_path / "templates.txt").write_text("a {} by hand\n")  # given templates come first
    assert (
        eval_main(
            [
                "--checkpoint",
                str(run_dir),
                *evaluate,
                "--templates",
                str(tmp_path / "templates.txt"),
            ]
        )
        == 0
    )
    prompts = json.loads(capsys.readouterr().out.splitlines()[-1])["prompts"]
    assert prompts["templates"] == ["a {} by hand"]
    (run_dir / "captions.txt").unlink()  # a run without them: the default ensemble
    assert eval_main(["--checkpoint", str(run_dir), *evaluate[:-1]]) == 0
    assert "zero-shot templates (default)" in capsys.readouterr().err
