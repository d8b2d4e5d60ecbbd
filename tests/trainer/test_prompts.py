"""Zero-shot prompts: several names per class, templates learnt from captions, and the prompts
recorded beside the figures they gave."""

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
