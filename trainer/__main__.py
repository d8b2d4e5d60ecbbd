"""`python -m trainer {train,eval,tokenizer} ...` (also under `torchrun -m trainer train ...`)."""

from __future__ import annotations

import sys

COMMANDS = {
    "train": "trainer.cli",
    "eval": "trainer.evaluate",
    "tokenizer": "trainer.tokenizer",
    "export": "trainer.pretrained",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m trainer {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
