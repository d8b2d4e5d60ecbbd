"""OpenCLIP's training flags in `webpairs train`: the same meaning, or one line naming ours.
docs/from-openclip.md's table is read and each row's flag given to the real parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import list_checkpoints, load_checkpoint
from trainer.cli import build_train_parser, main, run_config_from_args
from trainer.configs import UserError

from .test_train import args as tiny_args

DOC = Path(__file__).resolve().parents[2] / "docs" / "from-openclip.md"
ROW = re.compile(r"^\| `(--[^`]+)` \| ([^|]+) \| \*\*(same|differs|error)\*\*", re.M)
ROWS = ROW.findall(DOC.read_text())

# Every flag of open_clip_train 3.3.0's params.py; those of --pretrained and the locked towers
# are the model work's (docs/training.md), not this table's.
PARAMS_PY = """--accum-freq --batch-size --beta1 --beta2 --cache-dir --coca-caption-loss-weight
    --coca-contrastive-loss-weight --copy-codebase --csv-caption-key --csv-img-key --csv-separator
    --dataset-resampled --dataset-type --ddp-static-graph --debug --delete-previous-checkpoint
    --device --dist-backend --dist-url --distill-model --distill-pretrained --epochs
    --epochs-cooldown --eps --force-custom-text --force-patch-dropout --force-quick-gelu --gather-with-grad --grad-checkpointing
    --grad-clip-norm --horovod --imagenet-v2 --imagenet-val --local-loss --log-every-n-steps
    --log-local --logs --loss-dist-impl --lr --lr-cooldown-end --lr-cooldown-power
    --lr-scheduler --model --momentum --name --no-set-device-rank --opt --precision --pretrained-image
    --remote-sync --remote-sync-frequency --remote-sync-protocol --report-to --resume
    --save-frequency --save-most-recent --seed --siglip --skip-scheduler --torchcompile
    --torchscript --trace --train-data --train-data-upsampling-factors --train-num-samples
    --use-bn-sync --use-bnb-linear --val-data --val-frequency --val-num-samples --wandb-notes
    --wandb-project-name --warmup --wd --workers --zeroshot-frequency"""
OPENCLIP_FLAGS = set(PARAMS_PY.split())
MODEL_WORK = {"--pretrained"}


def config(*argv: str, data: str = "s/{0..3}.tar", output: str | None = "runs/x"):
    base = ["--data", data] + (["--output", output] if output else [])
    return run_config_from_args(build_train_parser().parse_args([*base, *argv]))


def test_the_table_covers_every_openclip_flag():
    listed = {word for flag, _, _ in ROWS for word in shlex.split(flag) if word[:2] == "--"}
    assert listed >= OPENCLIP_FLAGS - MODEL_WORK, sorted(OPENCLIP_FLAGS - listed)


@pytest.mark.parametrize("typed,ours,verdict", ROWS, ids=[r[0] for r in ROWS])
def test_each_openclip_flag_means_the_same_or_is_one_line_naming_ours(typed, ours, verdict):
    argv = shlex.split(typed)
    output = None if argv[0] == "--logs" else "runs/x"
    if verdict in ("same", "differs"):  # differs: accepted, the row says how (--precision bf16)
        config(*argv, output=output)
        return
    with pytest.raises(UserError) as e:
        config(*argv, output=output)
    message = str(e.value)
    assert "\n" not in message
    named = re.findall(r"`([^`]+)`", ours)
    assert all(n.split()[0] in message for n in named), (message, named)


def test_accum_freq_multiplies_the_batch_as_in_openclip():
    cfg = config("--batch-size", "8", "--accum-freq", "4")
    assert cfg.data.batch_size == 32 and cfg.train.accum_steps == 4  # 4 passes of 8
    cfg = config("--batch-size", "8", "--accum-freq", "4", "--micro-batch-size", "16")
    assert cfg.data.batch_size == 32 and cfg.train.accum_steps == 2


def test_micro_batch_size_splits_the_batch_without_changing_it():
    cfg = config("--batch-size", "10", "--micro-batch-size", "4")
    assert cfg.data.batch_size == 10 and cfg.train.accum_steps == 3  # 4 + 3 + 3 samples
    assert config("--batch-size", "10").train.accum_steps == 1


def test_accum_steps_is_refused_with_a_pointer():
    with pytest.raises(UserError, match="--micro-batch-size N .* --accum-freq K"):
        config("--accum-steps", "4")


def test_openclip_spellings_give_our_config():
    theirs = config(
        *("--logs", "runs", "--name", "b32", "--wd", "0.1", "--dataset-resampled"),
        *("--precision", "amp_bf16", "--grad-clip-norm", "2", "--siglip", "--beta2", "0.95"),
        data="a/{0..3}.tar::b/{0..3}.tar",
        output=None,
    )
    ours = run_config_from_args(
        build_train_parser().parse_args(
            [
                *("--data", "a/{0..3}.tar", "b/{0..3}.tar", "--output", "runs/b32"),
                *("--weight-decay", "0.1", "--resampled", "--precision", "bf16"),
                *("--grad-clip", "2", "--loss", "sigmoid", "--beta2", "0.95", "--name", "b32"),
            ]
        )
    )
    assert theirs == ours
    assert ours.train.betas == (0.9, 0.95) and ours.loss.kind == "sigmoid"


def test_a_run_needs_an_output():
    with pytest.raises(UserError, match="--output RUN_DIR is needed"):
        config(output=None)


def test_accum_freq_trains_exactly_the_larger_batch(digit_shards, tmp_path):
    """One step of --batch-size 4 --accum-freq 2 = one step of --batch-size 8: the same
    samples, the loss over all 8, the same updated weights (to float rounding)."""
    common = ["--steps", "1", "--warmup", "0", "--threads", "1", "--report-to", "none"]
    big, accum = tmp_path / "big", tmp_path / "accum"
    assert main(tiny_args(digit_shards, big, *common)) == 0
    assert main([*tiny_args(digit_shards, accum, *common), "--batch-size", "4", "--accum-freq", "2"]) == 0  # fmt: skip
    a = load_checkpoint(list_checkpoints(big)[-1][1])["model"]
    b = load_checkpoint(list_checkpoints(accum)[-1][1])["model"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # and the step was not the same as a step of 4 samples
    small = tmp_path / "small"
    assert main([*tiny_args(digit_shards, small, *common), "--batch-size", "4"]) == 0
    c = load_checkpoint(list_checkpoints(small)[-1][1])["model"]
    assert any(not torch.allclose(c[n], a[n], rtol=1e-4, atol=1e-5) for n in a)
