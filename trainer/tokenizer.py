"""Caption tokenization like CLIP's, on HuggingFace `tokenizers`.

Every caption becomes `context_length` ids: start-of-text, the caption's tokens (truncated),
end-of-text, then padding. The text tower pools at the end-of-text token.

    tok = CaptionTokenizer(byte_tokenizer(), context_length=32)     # no file needed
    tok = CaptionTokenizer.from_file("tok.json", context_length=77)  # any tokenizer.json
    ids = tok(["a photo of a cat"])  # LongTensor (1, 77)
    tok = CaptionTokenizer.openai_clip(context_length=77)  # OpenAI CLIP's BPE: open_clip.tokenize's ids

Train a byte-level BPE on the captions of shards:

    python -m trainer tokenizer train --data 'shards/{00000..00099}.tar' --output tok.json --vocab-size 8192
"""

from __future__ import annotations

import argparse
import functools
import gzip
import html
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from trainer.configs import UserError
from trainer.sources import SHARD_ERRORS, DataError, iter_shard, resolve_sources

log = logging.getLogger(__name__)

# Loader workers are forked after the training process has tokenized (health check); the
# Rust thread pool does not survive a fork, and one thread per worker is what we want anyway.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAD, SOT, EOT = "<|pad|>", "<|startoftext|>", "<|endoftext|>"
# OpenAI CLIP's vocabulary names them so (open_clip.tokenize's ids 49406 and 49407)
CLIP_SOT, CLIP_EOT = "<start_of_text>", "<end_of_text>"
# Names other tokenizer.json files use for the same roles (CLIP's, GPT-2's, BERT's, T5's).
_SOT_NAMES = (SOT, CLIP_SOT, "<s>", "[CLS]", "<bos>")
_EOT_NAMES = (EOT, CLIP_EOT, "</s>", "[SEP]", "<eos>")

OPENAI_CLIP = "openai-clip"  # --tokenizer openai-clip: OpenAI CLIP's BPE, as OpenCLIP ships it
CLIP_VOCAB = Path(__file__).parent / "vocab" / "bpe_simple_vocab_16e6.txt.gz"  # MIT, OpenAI
# CLIP's pre-tokenization: contractions, runs of letters, single digits, runs of other symbols
_CLIP_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CLEAN_KEY = "webpairs_clean"  # in to_json(): the caption clean-up the tokenizer expects
_PAD_NAMES = (PAD, "<pad>", "[PAD]")


class CaptionTokenizer:
    """Captions -> fixed-length id tensors, CLIP-style: [sot] tokens [eot] pad pad ..."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77, clean: str | None = None):
        self.tokenizer = tokenizer
        self.context_length = context_length
        if clean not in (None, OPENAI_CLIP):
            raise UserError(f"unknown caption clean-up {clean!r}")
        self.clean = clean  # "openai-clip": clean_caption_like_clip before encoding
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
        if self.clean == OPENAI_CLIP:
            texts = [clean_caption_like_clip(text) for text in texts]
        for row, enc in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = head + enc.ids[: self.room] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode([i for i in ids.tolist() if i != self.pad_id])

    def to_json(self) -> str:
        """The tokenizer.json text; with a clean-up, wrapped as {"webpairs_clean": ..., "tokenizer": ...}."""
        text = self.tokenizer.to_str()
        if self.clean is None:
            return text
        return json.dumps({_CLEAN_KEY: self.clean, "tokenizer": json.loads(text)})

    @classmethod
    def from_json(cls, text: str, context_length: int = 77) -> CaptionTokenizer:
        if _CLEAN_KEY in text[:100]:
            wrapped = json.loads(text)
            return cls.from_json(json.dumps(wrapped["tokenizer"]), context_length).with_clean(
                wrapped[_CLEAN_KEY]
            )
        return cls(Tokenizer.from_str(text), context_length)

    def with_clean(self, clean: str | None) -> CaptionTokenizer:
        return CaptionTokenizer(self.tokenizer, self.context_length, clean)

    @classmethod
    def openai_clip(cls, context_length: int = 77) -> CaptionTokenizer:
        """OpenAI CLIP's tokenizer: the ids of open_clip.tokenize (captions cleaned as it does)."""
        return cls(openai_clip_tokenizer(), context_length, clean=OPENAI_CLIP)

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


def clean_caption_like_clip(text: str) -> str:
    """OpenCLIP's SimpleTokenizer clean-up: ftfy, HTML entities (twice), whitespace runs to one
    space, lower case."""
    import ftfy  # only this tokenizer needs it

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte (what ByteLevel pre-tokenization emits), in the
    order CLIP numbers its first 256 tokens: printable Latin-1 bytes as themselves, then the
    others, in byte order, as chr(256), chr(257), ..."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(others))]


@functools.lru_cache(maxsize=1)
def openai_clip_tokenizer() -> Tokenizer:
    """OpenAI CLIP's BPE on `tokenizers`: 256 byte symbols, the same with the end-of-word
    mark, 48,894 merges, start and end of text (49,408 ids, the numbering of OpenAI's and
    OpenCLIP's tokenizers). Captions must be cleaned first (`clean_caption_like_clip`)."""
    with gzip.open(CLIP_VOCAB, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # line 0 is a version header; CLIP uses the first 49152 - 256 - 2 merges
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = _byte_symbols()
    names = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
    vocab = {name: i for i, name in enumerate([*names, CLIP_SOT, CLIP_EOT])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_WORDS), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    tokenizer.add_special_tokens([CLIP_SOT, CLIP_EOT])
    return tokenizer


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
