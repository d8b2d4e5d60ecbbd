"""A curation recipe: which stages run between decoding and sharding, in which order, with
which settings. One place; a JSON or YAML file or a named preset.

    recipe = load_recipe("datacomp_basic")
    recipe = load_recipe("my_recipe.yaml")   # {"stages": [...], "near_dedupe": {"threshold": 8}, ...}

Stages (each a composite PTransform over light rows -> {"kept", "removed"}):
  filters         size, aspect, caption length/words, language, blocklist, boilerplate  (filters.Filter)
  decontaminate   evaluation images found by bytes or phash                             (decontaminate.Decontaminate)
  exact_dedupe    same decoded pixels -> one survivor                                   (dedupe.ExactDedupe)
  near_dedupe     perceptual-hash LSH -> one survivor                                   (dedupe.NearDedupe)
  caption_dedupe  MinHash over caption 5-grams -> one survivor                          (dedupe.CaptionDedupe)
  clip_score      CLIP score under min_score or outside the top fraction                (score.ClipScoreFilter)
  semantic_dedupe image embeddings within a cosine threshold -> one survivor            (semdedup.SemanticDedupe)
Captions are cleaned and their language detected before the stages, when `captions` asks for it
or a filter needs the language. A `score` section with a checkpoint scores every pair first
(score.ScorePairs), which clip_score and semantic_dedupe need unless the input is scored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.curation.captions import CaptionConfig
from pipeline.curation.decisions import ResolveChains
from pipeline.curation.decontaminate import Decontaminate, DecontaminateConfig
from pipeline.curation.dedupe.captions import CaptionDedupe, CaptionDedupeConfig
from pipeline.curation.dedupe.exact import ExactDedupe, ExactDedupeConfig
from pipeline.curation.dedupe.near import NearDedupe, NearDedupeConfig
from pipeline.curation.dedupe.semantic import SemanticDedupe, SemDedupConfig
from pipeline.curation.filters import Filter, FilterConfig
from pipeline.scoring.clip_filter import ClipScoreConfig, ClipScoreFilter
from pipeline.scoring.pairs import ScoreConfig

STAGES = {
    "filters": Filter,
    "decontaminate": Decontaminate,
    "exact_dedupe": ExactDedupe,
    "near_dedupe": NearDedupe,
    "caption_dedupe": CaptionDedupe,
    "clip_score": ClipScoreFilter,
    "semantic_dedupe": SemanticDedupe,
}


@dataclass(frozen=True)
class Recipe:
    stages: tuple[str, ...] = ("exact_dedupe", "near_dedupe")
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    exact_dedupe: ExactDedupeConfig = field(default_factory=ExactDedupeConfig)
    near_dedupe: NearDedupeConfig = field(default_factory=NearDedupeConfig)
    caption_dedupe: CaptionDedupeConfig = field(default_factory=CaptionDedupeConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    clip_score: ClipScoreConfig = field(default_factory=ClipScoreConfig)
    semantic_dedupe: SemDedupConfig = field(default_factory=SemDedupConfig)

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(
                f"unknown curation stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}"
            )
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("a curation stage is listed twice")

    def transform(self, stage: str, output: str | None = None):
        if stage == "decontaminate":
            return Decontaminate(self.decontaminate, output)
        return STAGES[stage](getattr(self, stage))

    @property
    def detects_language(self) -> bool:
        return self.captions.detect_language or (
            "filters" in self.stages and self.filters.needs_language
        )

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


PRESETS: dict[str, Recipe] = {
    "none": Recipe(stages=()),
    "default": Recipe(),
    # DataComp's "basic filtering" baseline: English captions of more than 2 words and 5
    # characters, images whose smaller side exceeds 200 px and aspect ratio is under 3.
    "datacomp_basic": Recipe(
        stages=("filters",),
        filters=FilterConfig(
            min_side=201, max_aspect_ratio=3.0, min_words=3, min_caption_chars=6, languages=("en",)
        ),
    ),
    # What we recommend for a fresh crawl: cheap filters first, then dedupe what is left.
    "recommended": Recipe(
        stages=("filters", "exact_dedupe", "near_dedupe"),
        captions=CaptionConfig(clean=True),
        filters=FilterConfig(
            min_side=64,
            max_aspect_ratio=4.0,
            require_caption=True,
            min_caption_chars=3,
            max_caption_chars=1000,
            drop_boilerplate=True,
        ),
    ),
    # DataComp's CLIP-score baselines, on scores recorded by a `score` section (or a scored
    # input): the top 30 % of pairs, or an absolute cosine of 0.3 -- a threshold made for
    # OpenAI's ViT-B/32 scale; a small model of ours scores lower (see pipeline/scoring/pairs.py).
    "datacomp_clip_top30": Recipe(
        stages=("clip_score",), clip_score=ClipScoreConfig(top_fraction=0.3)
    ),
    "datacomp_clip_0.3": Recipe(stages=("clip_score",), clip_score=ClipScoreConfig(min_score=0.3)),
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


def _with_stage(recipe: Recipe, stage: str) -> Recipe:
    return (
        recipe
        if stage in recipe.stages
        else dataclasses.replace(recipe, stages=(stage, *recipe.stages))
    )


def with_overrides(
    recipe: Recipe,
    *,
    stages: tuple[str, ...] | None = None,
    near_dup_threshold: int | None = None,
    languages: tuple[str, ...] | None = None,
    blocklist: str | None = None,
    clean_captions: bool = False,
    decontaminate: str | None = None,
    score_checkpoint: str | None = None,
    score_model: str | None = None,
    score_pretrained: str | None = None,
) -> Recipe:
    """The command line's shortcuts applied to a recipe; a filter or decontamination asked for
    on the command line is added (first) to the stages if the recipe lacks it."""
    r = recipe
    if stages is not None:
        r = dataclasses.replace(r, stages=tuple(stages))
    if near_dup_threshold is not None:
        r = dataclasses.replace(
            r, near_dedupe=dataclasses.replace(r.near_dedupe, threshold=near_dup_threshold)
        )
    if languages is not None:
        r = _with_stage(
            dataclasses.replace(
                r, filters=dataclasses.replace(r.filters, languages=tuple(languages))
            ),
            "filters",
        )
    if blocklist is not None:
        r = _with_stage(
            dataclasses.replace(r, filters=dataclasses.replace(r.filters, blocklist=blocklist)),
            "filters",
        )
    if clean_captions:
        r = dataclasses.replace(r, captions=dataclasses.replace(r.captions, clean=True))
    if decontaminate is not None:
        r = dataclasses.replace(
            r, decontaminate=dataclasses.replace(r.decontaminate, source=decontaminate)
        )
        r = _with_stage(r, "decontaminate")
    if score_checkpoint is not None:
        r = dataclasses.replace(r, score=dataclasses.replace(r.score, checkpoint=score_checkpoint))
    r = with_score_model(r, score_model, score_pretrained, score_checkpoint)
    if "decontaminate" in r.stages and not r.decontaminate.source:
        raise ValueError(
            "the recipe runs 'decontaminate' but names no evaluation set (--decontaminate PATH)"
        )
    return r


def with_score_model(
    r: Recipe, model: str | None, pretrained: str | None, checkpoint: str | None = None
) -> Recipe:
    """--score-model ARCH --score-pretrained WEIGHTS: score with an OpenCLIP architecture."""
    if pretrained is not None and checkpoint is not None:
        raise ValueError("--score-pretrained (OpenCLIP weights) or --score-checkpoint, not both")
    if pretrained is not None and model is None and r.score.model is None:
        raise ValueError("--score-pretrained needs --score-model (its OpenCLIP architecture)")
    score = r.score
    if model is not None:
        score = dataclasses.replace(score, model=model)
    if pretrained is not None:
        score = dataclasses.replace(score, checkpoint=pretrained)
    return dataclasses.replace(r, score=score)


class ApplyStages(beam.PTransform):
    """Light rows -> {"kept": the survivors, "removed": every stage's decisions}: the stages in
    order, each on what the one before kept. A survivor of one stage may be removed by a later
    one, so decisions are resolved to name the final survivor."""

    def __init__(self, stages: list[tuple[str, beam.PTransform]]):
        super().__init__()
        self.stages = stages

    def expand(self, light):
        removed = []
        for label, stage in self.stages:
            out = light | label >> stage
            light = out["kept"]
            removed.append(out["removed"])
        if not removed:
            removed.append(light.pipeline | "NoDecisions" >> beam.Create([]))
        decisions = (
            removed | "AllDecisions" >> beam.Flatten() | "ResolveSurvivors" >> ResolveChains()
        )
        return {"kept": light, "removed": decisions}
