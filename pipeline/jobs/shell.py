"""The shell every job runs in: flag checks, the help text, the summary line, and `job_main`
(one clear error line for a user mistake, the exit code)."""

from __future__ import annotations

import logging
import sys

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.io.url_lists import InputError
from schemas import Stats, StatsMismatchError, Status

logger = logging.getLogger(__name__)


# Runners whose job servers take options this process does not know about.
_PORTABLE_RUNNERS = ("flinkrunner", "sparkrunner", "portablerunner", "prismrunner", "samzarunner")


def check_flags(argv: list[str], options: PipelineOptions) -> None:
    """Unknown flags are an error (Beam would only log and drop them), except where a
    portable runner's job server is the one that reads them."""
    from apache_beam.options.pipeline_options import (
        _BeamArgumentParser,
    )  # the parser Beam itself uses

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    runner = str(options.view_as(StandardOptions).runner or "").lower()
    flags = [a for a in unknown if a.startswith("-")]
    if flags and runner not in _PORTABLE_RUNNERS:
        raise InputError(f"unrecognized arguments: {' '.join(flags)}")


def summary_line(stats: Stats) -> str:
    parts = [f"input {stats.input}", f"written {stats.written} in {stats.shards} shards"]
    for status in (Status.FAILED, Status.FILTERED, Status.DUPLICATE, Status.INVALID):
        reasons = getattr(stats, status)
        if reasons:
            detail = ", ".join(
                f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])
            )
            parts.append(f"{status} {sum(reasons.values())} ({detail})")
    if stats.warnings:
        detail = ", ".join(f"{r} {n}" for r, n in sorted(stats.warnings.items()))
        parts.append(f"warnings {sum(stats.warnings.values())} ({detail})")
    return "; ".join(parts)


def job_main(argv: list[str] | None, prog: str, help_text, run_job) -> int:
    """The command-line shell every Beam job here shares: --help, logging, one-line errors
    (exit 2 for bad input, 1 when the counts do not add up) and the job's summary line.
    `help_text(prog)` -> str; `run_job(argv)` -> the summary line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(help_text(prog))
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("apache_beam").setLevel(logging.WARNING)  # its INFO lines drown ours
    try:
        line = run_job(argv)
    except (InputError, ValueError) as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except StatsMismatchError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 1
    except SystemExit as e:  # argparse inside Beam on a malformed flag value
        return int(e.code or 2)
    sys.stdout.write(line + "\n")
    return 0
