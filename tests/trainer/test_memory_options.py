"""`webpairs train` with the flags that trade memory for time, all in one run; combinations
that cannot work refused at start; FSDP2 checkpoints resumed on another world size."""

import logging
import subprocess
import sys
from collections import Counter

import pytest
import torch

from trainer.checkpoint import list_checkpoints, load_checkpoint
from trainer.cli import main

from .test_resume import REPO, seen_keys
from .test_train import args as tiny_args


def args(shards, run_dir, *extra):
    return tiny_args(shards, run_dir, "--log-every", "1", "--threads", "1", *extra)


def everything(finetune_at: int = 3) -> list[str]:
    """BASIC + SigLIP + CLIPA/FLIP on one CPU: 16 px images and 8-token captions, then 32 and 32
    from step `finetune_at` on."""
    return [
        *("--micro-batch-size", "4", "--loss", "sigmoid", "--loss-impl", "tiled"),
        *("--loss-tile", "3"),
        *("--grad-checkpointing", "--precision", "bf16", "--patch-dropout", "0.5"),
        *("--image-size", "16", "--context-length", "8", "--finetune-at", str(finetune_at)),
        *("--finetune-image-size", "32", "--finetune-context-length", "32"),
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--micro-batch-size", "16"], "--micro-batch-size 16 is more than the batch of 8"),
        (["--loss-tile", "0"], "--loss-tile must be at least 1"),
        (["--model", "tiny-resnet", "--patch-dropout", "0.5"], "patch dropout needs a ViT"),
        (["--patch-dropout", "1"], "patch dropout must be in [0, 1)"),
        (["--finetune-image-size", "64"], "need --finetune-at"),
        (["--finetune-at", "50", "--steps", "10"], "--finetune-at 50 must be below --steps 10"),
        (
            ["--finetune-at", "2", "--image-size", "12", "--finetune-image-size", "32"],
            "image size 12 is not a multiple of patch size 8",
        ),
        (["--finetune-at", "2", "--context-length", "64"], "context length 64 must be from 3"),
        (["--set", "init_logit_bias=-10"], "train it with --loss sigmoid"),
        (["--compile", "--compile-backend", "nope"], "unknown --compile-backend 'nope'"),
    ],
)
def test_combinations_that_cannot_work_are_one_error_line(
    digit_shards, tmp_path, capsys, extra, message
):
    assert main(args(digit_shards, tmp_path / "run", "--steps", "10", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("webpairs train: error: ") and message in err[-1], err[-1]


def test_every_memory_option_in_one_run_resumes_exactly_across_the_finetune_switch(
    digit_shards, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="trainer.train")
    straight = tmp_path / "straight"
    assert (
        main(args(digit_shards, straight, "--steps", "6", "--checkpoint-every", "2", *everything()))
        == 0
    )
    assert "step 3: finetuning on 32 px images, 32-token captions" in caplog.text
    checkpoints = dict(list_checkpoints(straight))
    assert sorted(checkpoints) == [2, 4, 6]
    final = load_checkpoint(checkpoints[6])
    assert final["model_config"]["vision"]["image_size"] == 32
    assert final["model"]["logit_bias"].shape == (1,)

    resumed = tmp_path / "resumed"  # from step 2: the resumed run crosses the switch itself
    resume = ["--steps", "6", "--resume", str(checkpoints[2]), *everything()]
    assert main(args(digit_shards, resumed, *resume)) == 0
    again = load_checkpoint(list_checkpoints(resumed)[-1][1])["model"]
    for name, value in final["model"].items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=1e-6, msg=name)

    infonce = ["--steps", "8", "--resume", str(checkpoints[6])]
    assert main(args(digit_shards, tmp_path / "other", *infonce)) == 2  # the model is SigLIP's


@pytest.mark.slow
def test_fsdp_on_two_ranks_writes_sharded_checkpoints_that_resume_on_one(
    digit_shards, tmp_path, keys_in
):
    run_dir = tmp_path / "run"
    # every option, sharded: full length from step 2, before the checkpoint at step 3
    fsdp = ["--strategy", "fsdp", "--debug-seen-keys", "--warmup", "2", *everything(2)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {"PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    first = [
        *torchrun,
        "-m",
        "trainer",
        "train",
        *args(digit_shards, run_dir, "--steps", "3", *fsdp),
    ]
    out = subprocess.run(first, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    ((step, path),) = list_checkpoints(run_dir)
    assert step == 3 and path.name == "step-00000003.dcp" and path.is_dir()

    resume = args(digit_shards, run_dir, "--steps", "6", "--resume", "latest", *fsdp)
    assert main(resume) == 0  # one process: no process group, no sharding
    assert [s for s, _ in list_checkpoints(run_dir)] == [3, 6]
    rows = seen_keys(run_dir)  # 2 ranks x 8 x 3 steps, then 1 rank x 8 x 3 steps
    epoch0 = [key for _, epoch, key in rows if epoch == 0]
    assert Counter(epoch0) == Counter(keys_in(digit_shards))  # every sample once
