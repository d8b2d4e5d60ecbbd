import subprocess
import sys

import pytest
from tokenizers import Tokenizer, models

from trainer.configs import UserError
from trainer.tokenizer import (
    CaptionTokenizer,
    byte_tokenizer,
    main,
    shard_captions,
    train_tokenizer,
)

CAPTION = "A photo of the digit seven"


def test_rows_are_sot_tokens_eot_then_padding():
    tok = CaptionTokenizer(byte_tokenizer(), context_length=32)
    row = tok([CAPTION])[0].tolist()
    n = len(CAPTION)  # one token a byte
    assert row[0] == tok.sot_id and row[n + 1] == tok.eot_id
    assert row[n + 2 :] == [tok.pad_id] * (32 - n - 2)
    assert tok.decode(tok([CAPTION])[0]) == CAPTION.lower()  # CLIP lower-cases


def test_long_captions_are_truncated_keeping_the_end_of_text_token():
    tok = CaptionTokenizer(byte_tokenizer(), context_length=8)
    row = tok(["a very long caption indeed"])[0].tolist()
    assert len(row) == 8 and row[0] == tok.sot_id and row[-1] == tok.eot_id
    assert tok.decode(tok(["a very long caption indeed"])[0]) == "a very"


def test_byte_tokenizer_ids_are_the_same_in_every_process():
    here = CaptionTokenizer(byte_tokenizer(), 32)([CAPTION])[0].tolist()
    code = (
        "from trainer.tokenizer import CaptionTokenizer, byte_tokenizer;"
        f"print(CaptionTokenizer(byte_tokenizer(), 32)([{CAPTION!r}])[0].tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(here)


def test_bpe_trained_on_shard_captions_merges_frequent_words(digit_shards, tmp_path):
    captions = list(shard_captions([str(p) for p in digit_shards]))
    assert len(captions) == 64
    tok = CaptionTokenizer(train_tokenizer(captions, vocab_size=300), context_length=32)
    assert 259 < tok.vocab_size <= 300
    n_tokens = int((tok([CAPTION])[0] != tok.pad_id).sum()) - 2
    assert n_tokens < len(CAPTION) / 2  # "a photo of the digit" is a handful of tokens
    assert (tok.pad_id, tok.sot_id, tok.eot_id) == (0, 1, 2)


def test_tokenizer_cli_writes_a_loadable_tokenizer_json(digit_shards, tmp_path):
    out = tmp_path / "tok.json"
    pattern = f"{digit_shards[0].parent}/{{00000..00003}}.tar"
    assert main(["train", "--data", pattern, "--output", str(out), "--vocab-size", "280"]) == 0
    tok = CaptionTokenizer.from_file(str(out), context_length=16)
    assert tok.vocab_size == 280 and tok([CAPTION]).shape == (1, 16)


def test_tokenizers_without_an_end_token_or_file_are_user_errors(tmp_path):
    plain = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(UserError, match="no end-of-text token"):
        CaptionTokenizer(plain)
    with pytest.raises(UserError, match="cannot load tokenizer"):
        CaptionTokenizer.from_file(str(tmp_path / "missing.json"))


def test_shard_captions_leave_out_the_keys_asked(digit_shards, keys_in):
    keys = keys_in(digit_shards)
    assert len(list(shard_captions([str(p) for p in digit_shards], skip_key=lambda k: True))) == 0
    kept = list(shard_captions([str(digit_shards[0])], skip_key=lambda k: k == keys[0]))
    assert len(kept) == 15  # 16 in the first shard, one left out


def test_train_learns_its_bpe_from_the_training_captions_and_keeps_it(digit_shards, tmp_path):
    from trainer.checkpoint import load_model
    from trainer.cli import main as train_main

    run_dir = tmp_path / "run"
    argv = ["--data", f"{digit_shards[0].parent}/*.tar", "--output", str(run_dir)]
    argv += ["--steps", "2", "--batch-size", "8", "--workers", "0", "--tokenizer", "bpe"]
    assert train_main([*argv, "--bpe-vocab-size", "300"]) == 0
    learnt = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    assert 259 < learnt.get_vocab_size() <= 300
    assert len(learnt.encode("a photo of the digit seven").ids) < len(CAPTION)  # merged words
    _, tokenizer = load_model(str(run_dir), "cpu")  # the checkpoint carries the same one
    assert tokenizer.to_json() == learnt.to_str()
