"""`python -m pipeline.curate ARGS` with the wall and CPU time of each fused stage the
in-process runner (DirectRunner in_memory, Beam's FnApiRunner) executes, printed when the job
ends: where a local run's start-up (before the first stage), crawl and tail go.

    PYTHONPATH=. .venv/bin/python bench/stage_times.py --input urls.parquet --output out/

bench/profile_crawl.py --stages runs it on the crawl benchmark's images; on a 10-URL list it
shows the start-up: imports, graph built, first stage. Stages under
--min-seconds are summed on one line. CPU is the main process's (thread time of all its
threads); the decode workers' CPU is not in it.
"""

from __future__ import annotations

import sys
import time

T0 = time.perf_counter()

import pipeline.curate  # noqa: E402, F401  (the entry point, first: as a user's run imports it)
from pipeline.jobs import curate  # noqa: E402


def timed_bundles(log: list) -> None:
    """Wraps the runner's bundle execution to append (start s, wall s, CPU s, stage) to `log`."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    execute = fn_runner.FnApiRunner._execute_bundle

    def execute_timed(self, context, bundle_manager, bundle_input):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return execute(self, context, bundle_manager, bundle_input)
        finally:
            wall = time.perf_counter() - start
            log.append((start - T0, wall, time.process_time() - cpu, bundle_manager.stage.name))

    fn_runner.FnApiRunner._execute_bundle = execute_timed


def short(stage: str, width: int = 110) -> str:
    """A fused stage's name lists every transform in it: keep the first and the last."""
    parts = [p.strip("()") for p in stage.replace(")+(", "|").split("|")]
    name = parts[0] if len(parts) == 1 else f"{parts[0]} ... {parts[-1]} ({len(parts)} steps)"
    return name if len(name) <= width else name[: width - 1] + "…"


def timed_build(marks: dict) -> None:
    """Wraps the job's graph construction to note when it starts and ends (s from the start)."""
    build = curate.build

    def build_timed(*args, **kwargs):
        marks["graph started"] = time.perf_counter() - T0
        try:
            return build(*args, **kwargs)
        finally:
            marks["graph built"] = time.perf_counter() - T0

    curate.build = build_timed


def main(argv: list[str]) -> int:
    min_s = 0.1
    if "--min-seconds" in argv:
        i = argv.index("--min-seconds")
        min_s = float(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    log: list = []
    marks: dict = {}
    timed_bundles(log)
    timed_build(marks)
    imported = time.perf_counter() - T0
    rc = curate.main(argv)
    end = time.perf_counter() - T0
    print(
        f"imports {imported:.2f} s; graph started at {marks['graph started']:.2f} s, built at "
        f"{marks['graph built']:.2f} s; first stage at "
        f"{log[0][0]:.2f} s; job ends at {end:.2f} s"
    )
    print("  start    wall     CPU  stage")
    rest = [0, 0.0, 0.0]
    for start, wall, cpu, name in log:
        if wall >= min_s:
            print(f"{start:7.2f} {wall:7.2f} {cpu:7.2f}  {short(name)}")
        else:
            rest = [rest[0] + 1, rest[1] + wall, rest[2] + cpu]
    print(f"{'':7} {rest[1]:7.2f} {rest[2]:7.2f}  the other {rest[0]} stages (each < {min_s} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
