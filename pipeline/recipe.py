"""A curation recipe: which stages run between decoding and sharding, in which order, with
which settings. One place; a JSON or YAML file or a named preset.

    recipe = load_recipe("datacomp_basic")
    recipe = load_recipe("my_recipe.yaml")   # {"stages": [...], "near_dedupe": {"threshold": 8}, ...}

Stages (each a composite PTransform over light rows -> {"kept", "removed"}):
  exact_dedupe   same decoded pixels -> one survivor       (dedupe.ExactDedupe)
  near_dedupe    perceptual-hash LSH -> one survivor       (dedupe.NearDedupe)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from pipeline.dedupe import ExactDedupe, ExactDedupeConfig, NearDedupe, NearDedupeConfig

STAGES = {
    "exact_dedupe": (ExactDedupe, "exact_dedupe"),
    "near_dedupe": (NearDedupe, "near_dedupe"),
}


@dataclass(frozen=True)
class Recipe:
    stages: tuple[str, ...] = ("exact_dedupe", "near_dedupe")
    exact_dedupe: ExactDedupeConfig = field(default_factory=ExactDedupeConfig)
    near_dedupe: NearDedupeConfig = field(default_factory=NearDedupeConfig)

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(
                f"unknown curation stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}"
            )
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("a curation stage is listed twice")

    def transform(self, stage: str):
        cls, attr = STAGES[stage]
        return cls(getattr(self, attr))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


PRESETS: dict[str, Recipe] = {
    "none": Recipe(stages=()),
    "default": Recipe(),
}


def recipe_from_dict(d: dict) -> Recipe:
    kwargs = {}
    for f in dataclasses.fields(Recipe):
        if f.name not in d:
            continue
        value = d[f.name]
        if f.name == "stages":
            kwargs["stages"] = tuple(value)
            continue
        sub = f.default_factory()  # type: ignore[misc]
        known = {g.name for g in dataclasses.fields(sub)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(
                f"recipe section {f.name!r} has unknown settings: {', '.join(sorted(unknown))}"
            )
        kwargs[f.name] = dataclasses.replace(
            sub, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
        )
    unknown = set(d) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise ValueError(f"recipe has unknown sections: {', '.join(sorted(unknown))}")
    return Recipe(**kwargs)


def load_recipe(name_or_path: str) -> Recipe:
    """A preset name, or a JSON/YAML file on any Beam filesystem."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if not FileSystems.exists(name_or_path):
        raise ValueError(
            f"--recipe {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file"
        )
    with FileSystems.open(name_or_path) as f:
        text = f.read().decode("utf-8")
    if name_or_path.endswith((".yaml", ".yml")):
        import yaml

        d = yaml.safe_load(text)
    else:
        d = json.loads(text)
    if not isinstance(d, dict):
        raise ValueError(f"recipe {name_or_path} is not a mapping")
    return recipe_from_dict(d)
