"""Caption tokenization like CLIP's, on HuggingFace `tokenizers`.

Every caption becomes `context_length` ids: start-of-text, the caption's tokens (truncated),
end-of-text, then padding. The text tower pools at the end-of-text token.

    tok = CaptionTokenizer(byte_tokenizer(), context_length=32)     # no file needed
    tok = CaptionTokenizer.from_file("tok.json", context_length=77)  # any tokenizer.json
    ids = tok(["a photo of a cat"])  # LongTensor (1, 77)

Train a byte-level BPE on the captions of shards:

    python -m trainer tokenizer train --data 'shards/{00000..00099}.tar' --output tok.json --vocab-size 8192
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from trainer.configs import UserError
from trainer.sources import SHARD_ERRORS, DataError, iter_shard, resolve_sources

log = logging.getLogger(__name__)

# Loader workers are forked after the training process has tokenized (health check); the
# Rust thread pool does not survive a fork, and one thread per worker is what we want anyway.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAD, SOT, EOT = "<|pad|>", "<|startoftext|>", "<|endoftext|>"
# Names other tokenizer.json files use for the same roles (CLIP's, GPT-2's, BERT's, T5's).
_SOT_NAMES = (SOT, "<s>", "[CLS]", "<bos>")
_EOT_NAMES = (EOT, "</s>", "[SEP]", "<eos>")
_PAD_NAMES = (PAD, "<pad>", "[PAD]")


class CaptionTokenizer:
    """Captions -> fixed-length id tensors, CLIP-style: [sot] tokens [eot] pad pad ..."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.sot_id = _first_id(tokenizer, _SOT_NAMES)
        self.eot_id = _first_id(tokenizer, _EOT_NAMES)
        if self.eot_id is None:
            raise UserError(f"tokenizer has no end-of-text token (one of {', '.join(_EOT_NAMES)})")
        pad_id = _first_id(tokenizer, _PAD_NAMES)
        self.pad_id = 0 if pad_id is None or pad_id == self.eot_id else pad_id
        self.room = context_length - 1 - (self.sot_id is not None)
        if self.room < 1:
            raise UserError(f"context length {context_length} leaves no room for text")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(N,) captions -> LongTensor (N, context_length)."""
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        head = [] if self.sot_id is None else [self.sot_id]
        for row, enc in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = head + enc.ids[: self.room] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode([i for i in ids.tolist() if i != self.pad_id])

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str, context_length: int = 77) -> CaptionTokenizer:
        return cls(Tokenizer.from_str(text), context_length)

    @classmethod
    def from_file(cls, path: str, context_length: int = 77) -> CaptionTokenizer:
        try:
            return cls(Tokenizer.from_file(path), context_length)
        except Exception as e:  # tokenizers raises plain Exception for missing/invalid files
            if isinstance(e, UserError):
                raise
            raise UserError(f"cannot load tokenizer {path}: {e}") from None


def _first_id(tokenizer: Tokenizer, names: tuple[str, ...]) -> int | None:
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def _byte_level(model: models.Model) -> Tokenizer:
    tokenizer = Tokenizer(model)
    # CLIP lower-cases captions; NFC so that the same text always gives the same bytes.
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def byte_tokenizer() -> Tokenizer:
    """A byte-level tokenizer without merges: 256 byte tokens + pad/sot/eot (vocab 259)."""
    vocab = {PAD: 0, SOT: 1, EOT: 2}
    # alphabet() comes in a different order in every process: sort it, or ids would change
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = _byte_level(models.BPE(vocab=vocab, merges=[]))
    tokenizer.add_special_tokens([PAD, SOT, EOT])
    return tokenizer


def train_tokenizer(captions: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE learned from `captions`; ids 0, 1, 2 are pad, sot, eot."""
    if vocab_size < 259:
        raise UserError(f"vocab size {vocab_size} is below the 259 byte and special tokens")
    tokenizer = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, SOT, EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(captions, trainer=trainer)
    return tokenizer


def shard_captions(
    specs: list[str], limit: int | None = None, skip_key: Callable[[str], bool] | None = None
) -> Iterator[str]:
    """Captions (`KEY.txt`) of the shards `specs` resolve to, in shard order; none of the
    samples whose key `skip_key` holds (validation pairs)."""
    count = 0
    for shard in resolve_sources(specs):
        try:
            for _, key, members in iter_shard(shard.url):
                if skip_key is not None and skip_key(key):
                    continue
                if "txt" in members:
                    yield members["txt"].decode("utf-8", errors="replace")
                    count += 1
                    if limit is not None and count >= limit:
                        return
        except SHARD_ERRORS as e:
            log.warning("skipping unreadable shard %s: %s", shard.url, e)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webpairs tokenizer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="learn a byte-level BPE from the captions of shards")
    train.add_argument("--data", nargs="+", required=True, help="shards, globs or manifest.json")
    train.add_argument("--output", required=True, help="tokenizer.json to write")
    train.add_argument("--vocab-size", type=int, default=8192)
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--limit", type=int, default=None, help="use at most this many captions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        captions = shard_captions(args.data, args.limit)
        tokenizer = train_tokenizer(captions, args.vocab_size, args.min_frequency)
    except (UserError, DataError) as e:
        print(f"webpairs tokenizer: error: {e}", file=sys.stderr)
        return 2
    if tokenizer.get_vocab_size() <= 259 and args.vocab_size > 259:
        log.warning("learned no merges: are there captions (KEY.txt) in %s?", args.data)
    tokenizer.save(args.output)
    log.info("wrote %s (vocab %d)", args.output, tokenizer.get_vocab_size())
    return 0
