"""Every `webpairs select` / `webpairs score` command that README.md and docs/ show is accepted
by the real parsers: known flags, parsable --where rules, a preset or a recipe file name."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.curation.recipe import PRESETS
from pipeline.curation.rules import parse_rule
from pipeline.jobs.options import CurateOptions
from pipeline.jobs.score import ScoreOptions
from pipeline.jobs.score import config_from_options as score_config
from pipeline.jobs.select import SelectOptions
from pipeline.jobs.shell import check_flags
from pipeline.scoring.crossfit import split_train_args
from tests.test_docs import documented

SELECT = documented(r"webpairs select\b")
SCORE = documented(r"webpairs score\b")


def test_the_docs_show_select_and_score():
    assert len(SELECT) >= 8 and len(SCORE) >= 1


@pytest.mark.parametrize("where,argv", SELECT + SCORE, ids=[w for w, _ in SELECT + SCORE])
def test_documented_select_or_score_command_is_accepted(where, argv):
    argv, _ = split_train_args(argv)  # `score --cross-fit K -- TRAINER FLAGS`
    options = PipelineOptions(argv)
    check_flags(argv, options)  # unknown flags raise InputError
    shared = options.view_as(CurateOptions)
    assert shared.input, where
    for rule in options.view_as(SelectOptions).where or ():
        parse_rule(rule)
    recipe = shared.recipe
    assert recipe is None or recipe in PRESETS or recipe.endswith((".yaml", ".json")), where


@pytest.mark.parametrize("where,argv", SCORE, ids=[w for w, _ in SCORE])
def test_documented_score_command_uses_only_score_flags(where, argv):
    argv, _ = split_train_args(argv)
    options = PipelineOptions(argv)
    _, cfg = score_config(options.view_as(CurateOptions))
    assert cfg.checkpoint or options.view_as(ScoreOptions).cross_fit, where
