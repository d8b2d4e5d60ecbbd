"""Zero-shot classification and retrieval: known answers from hand-built models, and the CLI."""

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.cli import main as train_main
from trainer.configs import EvalConfig, UserError
from trainer.evaluate import evaluate, main, zeroshot_prompts
from trainer.prompts import read_templates
from trainer.tokenizer import CaptionTokenizer, byte_tokenizer

TOKENIZER = CaptionTokenizer(byte_tokenizer(), context_length=32)
RGB = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


class ColourModel(torch.nn.Module):
    """Image: one-hot of its strongest channel. Text: one-hot of the colour it names, through
    `channel_of` (a wrong mapping makes a wrong classifier with a known accuracy)."""

    def __init__(self, channel_of):
        super().__init__()
        self.channel_of = channel_of

    def encode_image(self, pixels):  # (B, 3, S, S) normalized
        return F.one_hot(pixels.mean(dim=(2, 3)).argmax(dim=1), 3).float()

    def encode_text(self, ids):  # (B, T)
        texts = [TOKENIZER.decode(row) for row in ids]
        words = [next(w for w in self.channel_of if w in t) for t in texts]
        return F.one_hot(torch.tensor([self.channel_of[w] for w in words]), 3).float()


RIGHT = ColourModel({"red": 0, "green": 1, "blue": 2})
SWAPPED = ColourModel({"red": 2, "green": 1, "blue": 0})  # red and blue exchanged


def png(colour, size=20):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), RGB[colour]).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def colour_folder(tmp_path):
    for colour in RGB:
        (tmp_path / "classes" / colour).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "classes" / colour / f"{i}.png").write_bytes(png(colour))
    return tmp_path / "classes"


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("model, top1", [(RIGHT, 1.0), (SWAPPED, 1 / 3)], ids=["right", "swapped"])
def test_zeroshot_on_a_class_folder_gives_the_known_accuracy(colour_folder, model, top1):
    results = evaluate(model, TOKENIZER, EvalConfig(zeroshot=str(colour_folder)), 16, "cpu")
    assert results["top-1"] == pytest.approx(top1)
    assert results["top-5"] == 1.0 and results["zeroshot_images"] == 12  # 3 classes: top-3


def test_classnames_in_another_order_than_the_folders_keep_labels_right(colour_folder):
    details = {}
    cfg = EvalConfig(
        zeroshot=str(colour_folder), classnames="red,green,blue"
    )  # folders sort blue, green, red
    results = evaluate(RIGHT, TOKENIZER, cfg, 16, "cpu", details)
    assert results["top-1"] == 1.0
    assert details["classnames"] == ["red", "green", "blue"]
    assert details["confusion"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    with pytest.raises(UserError, match="do not match the class folders"):
        evaluate(
            RIGHT,
            TOKENIZER,
            EvalConfig(zeroshot=str(colour_folder), classnames="red,green"),
            16,
            "cpu",
        )


@pytest.mark.parametrize("label_in", ["cls", "json"])
def test_zeroshot_on_labelled_shards(tmp_path, label_in):
    names = ["green", "red", "blue"]  # order given by --classnames, not alphabetical
    members = []
    for i, colour in enumerate(["red", "red", "green", "blue"]):
        label = names.index(colour)
        members.append((f"s{i}.png", png(colour)))
        if label_in == "cls":
            members.append((f"s{i}.cls", str(label).encode()))
        else:
            members.append((f"s{i}.json", json.dumps({"label": label}).encode()))
    write_tar(tmp_path / "0.tar", members)
    cfg = EvalConfig(zeroshot=str(tmp_path / "0.tar"), classnames=",".join(names))
    assert evaluate(SWAPPED, TOKENIZER, cfg, 16, "cpu")["top-1"] == pytest.approx(1 / 4)
    assert evaluate(RIGHT, TOKENIZER, cfg, 16, "cpu")["top-1"] == 1.0


def test_retrieval_recall_both_ways(tmp_path):
    members = []
    for colour in RGB:
        members += [
            (f"{colour}.png", png(colour)),
            (f"{colour}.txt", f"a {colour} square".encode()),
        ]
    shards = str(write_tar(tmp_path / "0.tar", members))
    right = evaluate(RIGHT, TOKENIZER, EvalConfig(retrieval=shards), 16, "cpu")
    swapped = evaluate(SWAPPED, TOKENIZER, EvalConfig(retrieval=shards), 16, "cpu")
    assert right["image_to_text_R@1"] == right["text_to_image_R@1"] == 1.0
    assert swapped["image_to_text_R@1"] == swapped["text_to_image_R@1"] == pytest.approx(1 / 3)
    assert swapped["image_to_text_R@5"] == 1.0


def test_eval_cli_prints_top1_and_top5_for_a_trained_checkpoint(
    digit_shards, colour_folder, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert (
        train_main(
            [
                "--data",
                f"{digit_shards[0].parent}/*.tar",
                "--output",
                str(run_dir),
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["--checkpoint", str(run_dir), "--zeroshot", str(colour_folder)]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert 0 <= float(lines["top-1"]) <= float(lines["top-5"]) == 1.0
    # the printout, as JSON beside the checkpoint evaluated (the run's latest)
    checkpoint = run_dir / "checkpoints" / "step-00000003.pt"
    assert lines["results:"] == str(run_dir / "checkpoints" / "step-00000003.eval.json")
    saved = json.loads(Path(lines["results:"]).read_text())
    assert saved["checkpoint"] == str(checkpoint) and saved["zeroshot"] == str(colour_folder)
    assert f"{saved['results']['top-1']:.4f}" == lines["top-1"]
    assert saved["results"]["zeroshot_images"] == int(lines["zeroshot_images"])
    assert saved["prompts"]["classnames"] == [["blue"], ["green"], ["red"]]

    elsewhere = tmp_path / "r.json"
    argv = ["--checkpoint", str(checkpoint), "--retrieval", f"{digit_shards[0]}"]
    assert main([*argv, "--results", str(elsewhere)]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines())
    recall = json.loads(elsewhere.read_text())["results"]
    for k in (1, 5, 10):
        for way in ("image_to_text", "text_to_image"):
            assert f"{recall[f'{way}_R@{k}']:.4f}" == lines[f"{way}_R@{k}"]


def test_eval_cli_user_errors(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path), "--zeroshot", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("webpairs eval: error: no checkpoint in")


def test_a_class_is_recognised_by_any_of_its_names(colour_folder):
    model = ColourModel({"rouge": 0, "red": 0, "green": 1, "blue": 2})
    details = {}
    cfg = EvalConfig(zeroshot=str(colour_folder), classnames="rouge|red,green,blue")
    assert evaluate(model, TOKENIZER, cfg, 16, "cpu", details)["top-1"] == 1.0
    assert details["classnames"] == ["rouge", "green", "blue"]  # the first name labels a class
    assert details["prompts"]["classnames"][0] == ["rouge", "red"]
    assert "{}" in details["prompts"]["templates"]  # the default ensemble
    with pytest.raises(UserError, match="do not match the class folders"):
        evaluate(
            model,
            TOKENIZER,
            EvalConfig(zeroshot=str(colour_folder), classnames="rouge,green,blue"),
            16,
            "cpu",
        )


def test_openai_imagenet_templates_are_a_named_set(colour_folder, tmp_path, monkeypatch):
    templates = read_templates("openai_imagenet")
    assert len(templates) == len(set(templates)) == 80 and all("{}" in t for t in templates)
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    prompts, _ = zeroshot_prompts(
        EvalConfig(zeroshot=str(colour_folder), templates="openai_imagenet")
    )
    assert prompts.templates == templates and prompts.texts(0)[0] == "a bad photo of a blue."
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai_imagenet").write_text("my {}\n")  # a file of that name is a file
    assert read_templates("openai_imagenet") == ["my {}"]


def test_eval_json_holds_the_prompts(digit_shards, colour_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["--data", f"{digit_shards[0].parent}/*.tar", "--output", str(run_dir)]
    assert train_main([*argv, "--steps", "2", "--batch-size", "8", "--workers", "0"]) == 0
    capsys.readouterr()
    (tmp_path / "t.txt").write_text("a {} square\n{}\n")
    args = ["--checkpoint", str(run_dir), "--zeroshot", str(colour_folder), "--json"]
    assert main([*args, "--templates", str(tmp_path / "t.txt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompts"]["templates"] == ["a {} square", "{}"]
    assert out["prompts"]["classnames"] == [["blue"], ["green"], ["red"]]
