"""No Docker engine runs here: the Dockerfiles are linted (hadolint) and checked for what they copy."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    proc = subprocess.run([HADOLINT, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_exists_and_pins_its_base(dockerfile):
    text = dockerfile.read_text()
    for sources in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for src in sources.split():
            assert (ROOT / src).exists(), f"{dockerfile.name} copies missing {src}"
    base = re.search(r"^FROM (\S+)", text, flags=re.M).group(1)
    assert ":" in base and not base.endswith(":latest")


def test_compose_example_is_valid_yaml_with_two_nodes():
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    assert set(compose["services"]) == {"node0", "node1"}
    assert "--node-rank 1" in compose["services"]["node1"]["command"]


def test_trainer_base_image_torch_meets_the_declared_floor():
    """The trainer image takes torch from its base image (`pip install --no-deps .`), so the
    base image's torch must satisfy pyproject's `torch>=...`."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_req = next(
        r for r in map(Requirement, pyproject["project"]["dependencies"]) if r.name == "torch"
    )
    text = (ROOT / "docker/trainer.Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, flags=re.M).group(1)
    tag = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-\S+", base)
    assert tag, f"trainer base image {base} is not a pytorch/pytorch:<torch version>-... tag"
    assert torch_req.specifier.contains(Version(tag.group(1))), (
        f"{base} ships torch {tag.group(1)}, pyproject requires {torch_req}"
    )
