"""Every command the README and docs/ tell users to paste is accepted by the real parsers.

Documentation drifts from code silently; this reads the fenced code blocks, joins backslash
continuations, and hands each `webpairs curate|select|train` / `python -m pipeline.curate` /
`-m trainer train` command line to the parser that would receive it (nothing is run). Shell
scripts (```bash blocks) must pass `bash -n`.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.jobs.options import CurateOptions
from pipeline.jobs.shell import check_flags
from pipeline.runners.cluster import resolve_runner
from trainer.cli import build_train_parser, run_config_from_args

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def command_lines(code: str) -> list[str]:
    """Logical lines: continuations and multi-line quoted strings joined, comments dropped."""
    code = re.sub(r"\\\n\s*", " ", code)
    out, pending = [], ""
    for line in code.splitlines():
        line = (pending + " " + line.strip()).strip() if pending else line.split(" # ")[0].strip()
        if line.count('"') % 2:  # a quoted string goes on to the next line
            pending = line
            continue
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


ASSIGN = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def documented(pattern: str) -> list[tuple[str, list[str]]]:
    """(where, argv after the matched command) for every documented line matching `pattern`;
    shell variables assigned earlier in the same block (`T="--model tiny ..."`) are expanded."""
    found = []
    for path in DOCS:
        for _, code in blocks(path):
            env: dict[str, str] = {}
            for line in command_lines(code):
                a = ASSIGN.match(line)
                if a:
                    env[a.group(1)] = " ".join(shlex.split(a.group(2)))
                    continue
                m = re.search(pattern, line)
                if m:
                    rest = re.sub(
                        r"\$\{?([A-Z_][A-Z0-9_]*)\}?",
                        lambda v, env=env: env.get(v.group(1), v.group(0)),
                        line[m.end() :],
                    )
                    found.append((f"{path.name}: {line[:80]}", shlex.split(rest)))
    return found


TRAIN = documented(r"(?:webpairs|-m trainer) train\b")
# a command, not a name in backticks (`python -m pipeline.curate` in the README's layout)
CURATE = documented(r"(?<!`)(?:webpairs curate|python -m pipeline\.curate)\b(?!`)")


def test_the_docs_document_commands():
    # the parsers below must have something to check: the README alone has several of each
    assert len(TRAIN) >= 4 and len(CURATE) >= 8


@pytest.mark.parametrize("where,argv", TRAIN, ids=[w for w, _ in TRAIN])
def test_documented_train_command_is_accepted(where, argv):
    args = build_train_parser().parse_args(argv)
    run_config_from_args(args)  # the flag combination is valid (raises UserError if not)


@pytest.mark.parametrize("where,argv", CURATE, ids=[w for w, _ in CURATE])
def test_documented_curate_command_has_known_flags(where, argv):
    options = PipelineOptions(argv)
    resolve_runner(options, argv)  # --runner dask and its flags, as job_options does
    check_flags(argv, options)  # unknown flags raise InputError (portable runners excepted)
    opts = options.view_as(CurateOptions)
    # --retry-failed / --incremental take the input from the previous run
    assert opts.output and (opts.input or opts.retry_failed), where


SCRIPTS = [
    (f"{p.name} block {i}", code)
    for p in DOCS
    for i, (lang, code) in enumerate(blocks(p))
    if lang in ("bash", "sh")
]


@pytest.mark.parametrize("where,code", SCRIPTS, ids=[w for w, _ in SCRIPTS])
def test_documented_shell_scripts_parse(where, code):
    proc = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{where}: {proc.stderr}"


# `dask scheduler ...` / `dask worker ...`, also as a container's command (--entrypoint dask IMAGE)
DASK_CLI = re.compile(r"(?:^dask|--entrypoint dask \S+) (scheduler|worker)\b")


def dask_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in DOCS:
        for _, code in blocks(path):
            for line in command_lines(code):
                m = DASK_CLI.search(line)
                if m:
                    found.append(
                        (f"{path.name}: {line[:80]}", m.group(1), shlex.split(line[m.end() :]))
                    )
    return found


DASK = dask_commands()


def test_the_docs_show_a_dask_scheduler_and_workers():
    assert {command for _, command, _ in DASK} == {"scheduler", "worker"}


@pytest.mark.parametrize("where,command,argv", DASK, ids=[w for w, _, _ in DASK])
def test_documented_dask_command_is_accepted_by_dask(where, command, argv):
    pytest.importorskip("distributed", reason="the dask extra")
    from distributed.cli import dask_scheduler, dask_worker

    cli = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}[command]
    cli.make_context(f"dask {command}", argv)  # click parses and checks every flag, runs nothing


PYTHON_BLOCKS = [
    (f"{p.name} block {i}", code)
    for p in DOCS
    for i, (lang, code) in enumerate(blocks(p))
    if lang == "python"
]


@pytest.mark.parametrize("where,code", PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_documented_python_parses(where, code):
    ast.parse(code, filename=where)


def test_documented_slurm_cluster_renders_its_job_script():
    """The SLURMCluster call of docs/runners.md, made with dask-jobqueue (on a free port; no
    job is submitted): its workers are one process per core, one thread each, on the
    project's virtualenv."""
    jobqueue = pytest.importorskip("dask_jobqueue", reason="a dev dependency")
    (code,) = [c for _, c in PYTHON_BLOCKS if "SLURMCluster(" in c]
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    (make,) = [c for c in calls if getattr(c.func, "id", None) == "SLURMCluster"]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in make.keywords}
    (scale,) = [c for c in calls if getattr(c.func, "attr", None) == "scale"]
    inspect.signature(jobqueue.SLURMCluster.scale).bind(
        None, **{k.arg: ast.literal_eval(k.value) for k in scale.keywords}
    )
    kwargs["scheduler_options"] = {**kwargs.get("scheduler_options", {}), "port": 0}
    with jobqueue.SLURMCluster(**kwargs) as cluster:
        script = cluster.job_script()
    assert f"#SBATCH -p {kwargs['queue']}" in script
    worker = next(line for line in script.splitlines() if "dask_worker" in line)
    assert worker.startswith(kwargs["python"] + " -m distributed.cli.dask_worker")
    assert f"--nworkers {kwargs['processes']}" in worker and "--nthreads 1" in worker


EVAL = documented(r"(?:webpairs|-m trainer) eval\b")


@pytest.mark.parametrize("where,argv", EVAL, ids=[w for w, _ in EVAL])
def test_documented_eval_command_is_accepted(where, argv):
    from trainer.evaluate import build_eval_parser

    args = build_eval_parser().parse_args(argv)
    assert args.zeroshot or args.retrieval, where
