import random

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    CheckpointError,
    capture_rng,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng,
    restore_training_state,
    save_checkpoint,
)
from trainer.configs import TrainConfig
from trainer.model import create_model
from trainer.session import make_optimizer


def test_keeps_the_newest_and_resolves_latest(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    assert load_checkpoint(resolve_checkpoint("latest", tmp_path))["w"][0] == 40
    assert resolve_checkpoint(str(tmp_path)) == resolve_checkpoint("latest", tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000030.pt",
        "step-00000040.pt",
    ]


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full, say")


def test_a_failed_write_leaves_no_partial_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)})
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 2, {"w": torch.ones(2), "oops": Unpicklable()})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001.pt"]
    assert load_checkpoint(resolve_checkpoint("latest", tmp_path))["step"] == 1


def test_foreign_or_missing_checkpoints_are_user_errors(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "model.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a webpairs checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        resolve_checkpoint("latest", tmp_path / "empty-run")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(tmp_path, 1, {"rng": capture_rng()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(load_checkpoint(resolve_checkpoint("latest", tmp_path))["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_a_checkpoint_with_a_0_dim_logit_scale_still_resumes(tmp_path):
    torch.manual_seed(0)
    model = create_model("smoke", **{"text.vocab_size": 259})
    optimizer = make_optimizer(model, TrainConfig())
    images, texts = torch.randn(2, 3, 32, 32), torch.randint(3, 259, (2, 32))
    model(images, texts)[2].sum().backward()
    optimizer.step()
    old = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    old["model"]["logit_scale"] = old["model"]["logit_scale"].reshape(())  # as written before
    for state in old["optimizer"]["state"].values():  # FSDP2 support made it (1,)
        if state["exp_avg"].numel() == 1:
            state["exp_avg"], state["exp_avg_sq"] = (
                state[k].reshape(()) for k in ("exp_avg", "exp_avg_sq")
            )
    fresh = create_model("smoke", **{"text.vocab_size": 259})
    fresh_optimizer = make_optimizer(fresh, TrainConfig())
    restore_training_state(fresh, fresh_optimizer, old)
    assert fresh.logit_scale.shape == (1,)
    fresh(images, texts)[2].sum().backward()
    fresh_optimizer.step()  # the moments fit the parameter again
