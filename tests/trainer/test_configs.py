import math

import pytest

from trainer.cli import build_train_parser, run_config_from_args
from trainer.configs import ScheduleConfig, UserError, get_model_config, get_recipe, list_models
from trainer.schedule import lr_at


def test_presets_include_a_smoke_model_and_vit_b16():
    assert {"tiny", "small", "base"} <= set(list_models())
    base = get_model_config("base")
    assert (base.vision.patch_size, base.vision.width, base.vision.layers) == (16, 768, 12)
    assert get_model_config("tiny").vision.image_size <= 64


def test_overrides_parse_to_the_field_type():
    cfg = get_model_config("tiny", ["vision.width=96", "text.causal=false", "embed_dim=32"])
    assert cfg.vision.width == 96 and cfg.text.causal is False and cfg.embed_dim == 32


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["vision.widht=96"], "no field 'widht'"),
        (["vision.width=wide"], "not a int"),
        (["vision.patch_size=7"], "not a multiple of patch size"),
        (["nonsense"], "not key=value"),
    ],
)
def test_bad_overrides_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        get_model_config("tiny", overrides)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError, match="known: base, small, smoke, tiny"):
        get_model_config("huge")


def test_command_line_reaches_the_narrow_configs():
    args = build_train_parser().parse_args(
        [
            "--data",
            "a.tar",
            "b.tar",
            "--output",
            "run",
            "--model",
            "tiny",
            "--image-size",
            "64",
            "--batch-size",
            "16",
            "--steps",
            "50",
            "--warmup",
            "5",
            "--lr",
            "1e-3",
            "--workers",
            "0",
        ]
    )
    cfg = run_config_from_args(args)
    assert cfg.model.vision.image_size == 64
    assert (cfg.data.data, cfg.data.batch_size, cfg.data.workers) == (["a.tar", "b.tar"], 16, 0)
    assert (cfg.schedule.total_steps, cfg.schedule.warmup_steps, cfg.schedule.lr) == (50, 5, 1e-3)
    assert cfg.train.steps == 50 and cfg.train.output == "run"


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    cfg = ScheduleConfig(lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)
    values = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert not math.isnan(lr_at(0, ScheduleConfig(warmup_steps=0, total_steps=0)))


def test_a_preset_trains_with_its_recipe_unless_flags_say_otherwise(tmp_path):
    def parse(*extra):
        argv = ["--data", "a.tar", "--output", str(tmp_path / "run"), *extra]
        return run_config_from_args(build_train_parser().parse_args(argv))

    tiny, recipe = parse("--model", "tiny"), get_recipe("tiny")
    assert (tiny.schedule.lr, tiny.schedule.warmup_steps) == (recipe.lr, recipe.warmup_steps)
    assert tiny.data.crop_scale == (recipe.crop_scale, 1.0) and tiny.train.tokenizer == "bpe"
    assert tiny.train.weight_decay == recipe.weight_decay
    assert tiny.loss.positives == recipe.positives == "captions"
    assert parse("--model", "tiny", "--positives", "pairs").loss.positives == "pairs"
    assert parse("--model", "tiny", "--loss", "sigmoid").loss.positives == "pairs"
    smoke = parse("--model", "smoke")
    assert smoke.train.tokenizer == "byte" and smoke.schedule.lr == get_recipe("smoke").lr
    given = parse("--model", "tiny", "--lr", "1e-4", "--crop-scale", "1", "--tokenizer", "byte")
    assert (given.schedule.lr, given.data.crop_scale, given.train.tokenizer) == (
        1e-4,
        (1, 1),
        "byte",
    )
    # resuming a tiny run without --model: still tiny's recipe, from the run's config.json
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"model": {"name": "tiny"}}')
    assert parse("--resume", "latest", "--model", "smoke").schedule.lr == recipe.lr
