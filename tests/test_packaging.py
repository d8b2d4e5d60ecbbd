"""What the code imports is what the package declares and the images install: every third-party
import of pipeline/, trainer/, schemas/ and webpairs_cli.py maps (importlib.metadata) to a
distribution named in pyproject.toml, the Docker images install what their code imports at
module level, and the torch floor covers the torch APIs the trainer calls."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
OWN = {"pipeline", "trainer", "schemas", "webpairs_cli"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def third_party_imports(*paths: str) -> dict[str, dict[str, bool]]:
    """Top-level module -> {file: imported at module level} for every import under `paths`
    that is neither the standard library nor this project's own packages."""
    found: dict[str, dict[str, bool]] = {}
    files = [p for path in paths for p in sorted((ROOT / path).glob("**/*.py")) or [ROOT / path]]
    for file in files:
        tree = ast.parse(file.read_text(), filename=str(file))
        lazy = {
            id(node)
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in OWN or top == "__future__":
                    continue
                where = found.setdefault(top, {})
                rel = str(file.relative_to(ROOT))
                where[rel] = where.get(rel, False) or id(node) not in lazy
    return found


def distributions(module: str) -> set[str]:
    dists = packages_distributions().get(module)
    assert dists, f"{module} is imported but no installed distribution provides it"
    return {canonicalize_name(d) for d in dists}


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_every_third_party_import_is_declared_in_pyproject():
    core = names(PYPROJECT["dependencies"])
    extras = {
        extra: names(reqs)
        for extra, reqs in PYPROJECT["optional-dependencies"].items()
        if extra != "dev"  # test tools never serve the shipped code
    }
    missing = []
    for module, files in third_party_imports(
        "pipeline", "trainer", "schemas", "webpairs_cli.py"
    ).items():
        dists = distributions(module)
        if dists & core:
            continue
        # a package outside the core may only be imported inside a function, from an extra
        eager = sorted(f for f, at_module_level in files.items() if at_module_level)
        in_extra = [extra for extra, declared in extras.items() if dists & declared]
        if eager or not in_extra:
            missing.append(f"{module} ({', '.join(sorted(dists))}) in {', '.join(sorted(files))}")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(missing)


PROJECT_LIST_LESS_TORCH = (
    "deps if not d.startswith('torch')))\" > /tmp/requirements.txt",
    "pip install --no-cache-dir -r /tmp/requirements.txt",
)


def installed_by(dockerfile: str) -> set[str]:
    """Distribution names the image's `pip install` lines name, and pyproject's own list (less
    torch) where the image installs that (the pipeline image: nothing listed twice)."""
    text = (ROOT / "docker" / dockerfile).read_text().replace("\\\n", " ")
    runs = re.findall(r"^RUN (.+)$", text, flags=re.M)
    specs = [s for run in runs for s in re.findall(r'"([^"]+)"', run) if "import " not in s]
    if all(part in text for part in PROJECT_LIST_LESS_TORCH):
        specs += [d for d in PYPROJECT["dependencies"] if not d.startswith("torch")]
    return {canonicalize_name(re.match(r"[A-Za-z0-9._-]+", s).group(0)) for s in specs}


def test_pipeline_image_installs_the_projects_own_dependency_list():
    text = (ROOT / "docker/pipeline.Dockerfile").read_text().replace("\\\n", " ")
    assert all(part in text for part in PROJECT_LIST_LESS_TORCH)
    # nothing re-listed by hand beside Beam's own extras
    pip_lines = [r for r in re.findall(r"^RUN (.+)$", text, flags=re.M) if "pip install" in r]
    named = {s for r in pip_lines for s in re.findall(r'"([^"]+)"', r) if "import " not in s}
    assert named == {"apache-beam[gcp,aws,dask]==${BEAM_VERSION}"}


@pytest.mark.parametrize(
    ("dockerfile", "packages", "not_pip_installed"),
    [
        # torch: only pipeline/scoring/handler.py imports it, itself imported lazily by scoring,
        # which this image does not run (see the Dockerfile)
        ("pipeline.Dockerfile", ("pipeline", "schemas"), {"torch"}),
        ("trainer.Dockerfile", ("trainer", "schemas"), {"torch"}),  # from the base image
    ],
)
def test_docker_image_installs_what_its_code_imports(dockerfile, packages, not_pip_installed):
    # `pip install --no-deps .` in the image: its other pip lines must name every package the
    # code imports when a module loads (imports inside functions may be absent)
    installed = installed_by(dockerfile) | not_pip_installed
    missing = sorted(
        f"{module} ({', '.join(sorted(dists))})"
        for module, files in third_party_imports(*packages).items()
        if any(files.values()) and not (dists := distributions(module)) & installed
    )
    assert not missing, f"docker/{dockerfile} does not install: {', '.join(missing)}"


# The torch APIs the trainer calls that appeared late, with the release that made them public.
# Each pattern must still occur in trainer/ (so an entry goes when its use goes).
TORCH_API_SINCE = {
    r"from torch\.distributed\.fsdp import [^\n]*\bfully_shard\b": "2.6",  # FSDP2, public path
    r"dcp\.load\([^)]*\bno_dist=": "2.7",  # load in one process of a distributed checkpoint
}


def test_torch_floor_covers_the_torch_apis_the_trainer_uses():
    source = "\n".join(p.read_text() for p in sorted((ROOT / "trainer").glob("**/*.py")))
    torch_req = next(Requirement(r) for r in PYPROJECT["dependencies"] if r.startswith("torch"))
    for pattern, since in TORCH_API_SINCE.items():
        assert re.search(pattern, source), f"trainer/ no longer matches {pattern!r}: drop it"
        v = Version(since)
        last_without = Version(f"{v.major}.{v.minor - 1}.99")
        assert not torch_req.specifier.contains(last_without), (
            f"pyproject allows {torch_req} but {pattern!r} needs torch>={since}"
        )


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("README.md", r"TORCH_SPEC='torch==([\d.]+)'"),
        ("Makefile", r"TORCH_SPEC \?= torch==([\d.]+)"),
    ],
)
def test_documented_torch_builds_satisfy_the_declared_range(path, pattern):
    torch_req = next(Requirement(r) for r in PYPROJECT["dependencies"] if r.startswith("torch"))
    versions = re.findall(pattern, (ROOT / path).read_text())
    assert versions, f"no {pattern!r} in {path}"
    for version in versions:
        assert torch_req.specifier.contains(Version(version)), f"{path}: torch=={version}"
