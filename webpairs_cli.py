"""The `webpairs` command: parse the subcommand, then hand over to one `main(argv)`.

    webpairs curate --input urls.parquet --output out/
    webpairs train --data out/manifest.json --output run/

Lives beside the packages (not in them) so that `pipeline` and `trainer` never import each
other; each subcommand's module is imported only when it is asked for.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from contextlib import nullcontext

COMMANDS = {
    "curate": ("pipeline.curate", "URL lists in, WebDataset shards out (Apache Beam)"),
    "score": (
        "pipeline.jobs.score",
        "record a checkpoint's CLIP scores in an output's metadata",
    ),
    "select": ("pipeline.jobs.select", "re-select an output by its recorded metadata, no download"),
    "inspect": (
        "pipeline.accounting.report",
        "print the funnel and distributions of a curated output",
    ),
    "train": ("trainer.cli", "train a CLIP/BASIC dual encoder on shards"),
    "eval": ("trainer.evaluate", "zero-shot classification and retrieval"),
    "tokenizer": ("trainer.tokenizer", "train or inspect a BPE tokenizer"),
    "export": ("trainer.pretrained", "write a checkpoint open_clip loads (--format open_clip)"),
    "demo": ("pipeline.demo.app", "the whole system on bundled data, no network"),
}


def usage() -> str:
    lines = [
        "usage: webpairs COMMAND [options]   (webpairs COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(
            f"webpairs: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})\n"
        )
        return 2
    module_name = COMMANDS[name][0]
    try:
        if module_name.startswith("pipeline."):
            from pipeline.startup import job_imports  # Beam imported quietly (startup.py)
        else:
            job_imports = nullcontext
        with job_imports():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        sys.stderr.write(
            f"webpairs: error: command {name!r} is not available in this installation ({e})\n"
        )
        return 2
    kwargs = (
        {"prog": f"webpairs {name}"} if "prog" in inspect.signature(module.main).parameters else {}
    )
    return module.main(rest, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
