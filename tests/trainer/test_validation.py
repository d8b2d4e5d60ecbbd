"""--val-fraction: held-out pairs chosen by key, never trained on, measured during training."""

import json

from trainer.cli import main
from trainer.validation import in_validation


def test_the_held_out_share_is_fixed_by_the_key_and_nested():
    keys = [f"{shard:05d}{i:04d}" for shard in range(4) for i in range(1000)]
    quarter = {k for k in keys if in_validation(k, 0.25)}
    tenth = {k for k in keys if in_validation(k, 0.1)}
    assert 0.23 < len(quarter) / len(keys) < 0.27 and 0.08 < len(tenth) / len(keys) < 0.12
    assert tenth <= quarter  # a larger fraction only adds keys
    assert quarter == {k for k in keys if in_validation(k, 0.25)}  # no state, no seed
    assert not any(in_validation(k, 0.0) for k in keys)


def test_held_out_pairs_are_never_trained_on_and_are_measured(digit_shards, keys_in, tmp_path):
    run_dir = tmp_path / "run"
    every_key = set(keys_in(digit_shards))  # 64 samples in 4 shards
    held_out = {k for k in every_key if in_validation(k, 0.25)}
    assert 8 <= len(held_out) <= 24
    argv = ["--data", f"{digit_shards[0].parent}/*.tar", "--output", str(run_dir)]
    argv += ["--batch-size", "8", "--workers", "2", "--steps", "20", "--eval-every", "10"]
    assert main([*argv, "--val-fraction", "0.25", "--debug-seen-keys"]) == 0
    seen = set()
    for path in run_dir.glob("seen-keys.rank*.txt"):
        seen |= {line.split()[2] for line in path.read_text().splitlines()}
    assert seen == every_key - held_out  # 160 samples drawn: two epochs and more
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in val] == [10, 20]
    assert all(r["val/pairs"] == len(held_out) for r in val)
    assert all(0 <= r["val/image_to_text_R@1"] <= 1 and r["val/loss"] > 0 for r in val)


def test_validation_flags_mistakes_are_one_line(digit_shards, tmp_path, capsys):
    argv = ["--data", f"{digit_shards[0].parent}/*.tar", "--output", str(tmp_path / "r")]
    assert main([*argv, "--val-fraction", "1"]) == 2
    assert "--val-fraction must be in [0, 1)" in capsys.readouterr().err
    assert main([*argv, "--eval-every", "5"]) == 2
    assert "--eval-every needs" in capsys.readouterr().err
