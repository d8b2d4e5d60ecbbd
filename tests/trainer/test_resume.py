"""Interrupt a real `python -m trainer train` process mid-epoch, then `--resume latest`."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from trainer.checkpoint import list_checkpoints, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_args(shards, run_dir, *extra):
    return [
        "train",
        "--data",
        f"{shards[0].parent}/*.tar",
        "--output",
        str(run_dir),
        "--model",
        "smoke",
        "--batch-size",
        "8",
        "--workers",
        "2",
        "--shuffle-buffer",
        "10",
        "--steps",
        "10",
        "--warmup",
        "2",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
        "--debug-seen-keys",
        *extra,
    ]


def start(args, torchrun=0):
    launcher = [sys.executable, "-m", "trainer"]
    if torchrun:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={torchrun}",
            "-m",
            "trainer",
        ]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        launcher + args,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc, timeout=180):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for_checkpoint(run_dir, step, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not any(s >= step for s, _ in list_checkpoints(run_dir)):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def seen_keys(run_dir):
    """(step, epoch, key) of every sample trained on, from every rank's debug log."""
    rows = []
    for path in sorted(run_dir.glob("seen-keys.rank*.txt")):
        for line in path.read_text().splitlines():
            step, epoch, key = line.split()
            rows.append((int(step), int(epoch), key))
    return rows


def final_model(run_dir):
    return load_checkpoint(list_checkpoints(run_dir)[-1][1])["model"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_latest_equals_an_uninterrupted_run(
    digit_shards, tmp_path, keys_in
):
    # 4 shards x 16 samples, 2 loader workers, batch 8: an epoch is 8 steps; we train 10
    straight = tmp_path / "straight"
    code, out = finish(start(train_args(digit_shards, straight)))
    assert code == 0, out

    run_dir = tmp_path / "interrupted"
    # checkpoints at odd steps: the resumed loader must start with the second worker
    proc = start(
        train_args(digit_shards, run_dir, "--checkpoint-every", "3", "--debug-step-delay", "0.3")
    )
    wait_for_checkpoint(run_dir, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader workers, no goodbye
    proc.wait()
    steps_done = max(s for s, _ in list_checkpoints(run_dir))
    assert steps_done in (3, 6, 9)
    code, out = finish(start(train_args(digit_shards, run_dir, "--resume", "latest")))
    assert code == 0, out

    expected, resumed = final_model(straight), final_model(run_dir)
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)

    rows = seen_keys(run_dir)
    assert sorted({step for step, _, _ in rows}) == list(range(1, 11))
    epoch0 = [key for _, epoch, key in rows if epoch == 0]
    assert Counter(epoch0) == Counter(keys_in(digit_shards))  # every sample exactly once
    assert rows == seen_keys(straight)  # and in the same order


@pytest.mark.slow
def test_sigterm_then_resume_on_two_ranks_finishes_the_epoch_exactly_once(
    digit_shards, tmp_path, keys_in
):
    run_dir = tmp_path / "run"
    first = start(
        train_args(digit_shards, run_dir, "--checkpoint-every", "100", "--debug-step-delay", "0.3")
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "seen-keys.rank0.txt").exists() or len(seen_keys(run_dir)) < 16:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # preemption: checkpoint, then exit 143
    code, out = finish(first)
    assert code == 143, out
    ((stopped_at, _),) = list_checkpoints(run_dir)
    assert 2 <= stopped_at < 8  # mid-epoch

    args = train_args(digit_shards, run_dir, "--resume", "latest", "--workers", "1")
    code, out = finish(start(args, torchrun=2))
    assert code == 0, out
    assert load_checkpoint(list_checkpoints(run_dir)[-1][1])["step"] == 10

    rows = seen_keys(run_dir)
    epoch0 = [key for _, epoch, key in rows if epoch == 0]
    assert Counter(epoch0) == Counter(keys_in(digit_shards))
    later = [key for _, epoch, key in rows if epoch == 1]
    assert len(later) == len(set(later))
