"""Where a curate job's start-up goes before its first stage: the garbage collector during the
imports, the graph's construction, Beam's output-type inference inside it, the leaf transforms,
and (with --coders) each PCollection's coder, to compare two trees. The job is built, not run.

    PYTHONPATH=. .venv/bin/python bench/build_costs.py --input u10.parquet --output o10
    PYTHONPATH=. .venv/bin/python bench/build_costs.py --plain-options ...   # Beam's own options
    PYTHONPATH=. .venv/bin/python bench/build_costs.py --plain-imports ...   # no import guard
    PYTHONPATH=. .venv/bin/python bench/build_costs.py --coders coders.json ...

--plain-options builds with Beam's PipelineOptions in place of JobOptions (whose views are
made once, pipeline/jobs/shell.py): the difference is the cost of Beam re-parsing the flags
at every step.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
import time

# --plain-imports: the job's module imported without the entry point's guard (the collector
# on during the imports, nothing frozen), as before pipeline/startup.py
PLAIN_IMPORTS = "--plain-imports" in sys.argv

_gc = {"s": 0.0, "runs": 0, "since": 0.0}


def _gc_timer(phase: str, info: dict) -> None:
    if phase == "start":
        _gc["since"] = time.perf_counter()
    else:
        _gc["s"] += time.perf_counter() - _gc["since"]
        _gc["runs"] += 1


gc.callbacks.append(_gc_timer)
T0 = time.perf_counter()

importlib.import_module("pipeline.jobs.curate" if PLAIN_IMPORTS else "pipeline.curate")
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.pipeline import PipelineVisitor  # noqa: E402
from apache_beam.transforms import core  # noqa: E402

from pipeline.jobs import curate, shell  # noqa: E402

IMPORTED = time.perf_counter() - T0
GC_IN_IMPORTS = dict(_gc)


class _Leaves(PipelineVisitor):
    def __init__(self):
        self.count = 0

    def visit_transform(self, node):
        self.count += 1


def _coders(p) -> dict[str, str]:
    """PCollection unique name -> its coder, spelled out from the runner API graph."""
    comps = p.to_runner_api().components

    def spell(cid: str) -> str:
        c = comps.coders[cid]
        inner = ",".join(spell(x) for x in c.component_coder_ids)
        return c.spec.urn + (f"[{inner}]" if inner else "") + f"<{len(c.spec.payload)}>"

    return {pc.unique_name: spell(pc.coder_id) for pc in comps.pcollections.values()}


def main(argv: list[str]) -> int:
    coders_out = None
    if "--coders" in argv:
        i = argv.index("--coders")
        coders_out, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
    argv = [a for a in argv if a != "--plain-imports"]
    if "--plain-options" in argv:
        argv = [a for a in argv if a != "--plain-options"]
        shell.JobOptions = PipelineOptions  # job_options() makes Beam's own options
    inferring = [0.0]
    for cls in (core.DoFn, core.CallableWrapperDoFn):
        infer = cls.infer_output_type

        def timed(self, input_type, infer=infer):
            start = time.perf_counter()
            try:
                return infer(self, input_type)
            finally:
                inferring[0] += time.perf_counter() - start

        cls.infer_output_type = timed
    build = curate.build

    def build_and_report(p, *args, **kwargs):
        gc_before, start = _gc["s"], time.perf_counter()
        build(p, *args, **kwargs)
        built = time.perf_counter() - start
        leaves = _Leaves()
        p.visit(leaves)
        print(
            f"imports {IMPORTED:.2f} s (the collector {GC_IN_IMPORTS['s']:.3f} s in "
            f"{GC_IN_IMPORTS['runs']} runs); graph built in {built:.3f} s (type inference "
            f"{inferring[0]:.3f} s, the collector {_gc['s'] - gc_before:.3f} s); "
            f"{leaves.count} leaf transforms"
        )
        if coders_out:
            with open(coders_out, "w") as f:
                json.dump(_coders(p), f, indent=0, sort_keys=True)
        raise SystemExit(0)  # built: the job itself is not run

    curate.build = build_and_report
    try:
        return curate.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
