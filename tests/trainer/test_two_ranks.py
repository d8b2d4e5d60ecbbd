"""Two Gloo ranks against one process on the global batch: every loss variant, contrastive
accumulation, FSDP2 against DDP, and a sharded checkpoint resumed at world size 1.

One spawn does all the two-rank work (a spawn costs seconds); the tests compare its results."""

import copy
import datetime
import math
import time
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from trainer.accum import forward_backward
from trainer.checkpoint import (
    full_model_state,
    load_checkpoint,
    resolve_checkpoint,
    restore_training_state,
    save_sharded_checkpoint,
)
from trainer.configs import LossConfig, TrainConfig
from trainer.distributed import World, all_reduce_mean, cleanup, clip_gradients, wrap_model
from trainer.loss import caption_groups, contrastive_loss, siglip_loss
from trainer.model import create_model
from trainer.session import make_optimizer

pytestmark = pytest.mark.slow  # one two-rank spawn: 10-30 s on the shared two cores

GLOBAL_BATCH, WORLD, STEPS = 8, 2, 3

# name: (loss, accumulation steps); each against its loss kind, dense, on the global batch
VARIANTS = {
    "infonce": (LossConfig("infonce"), 1),
    "infonce-accum": (LossConfig("infonce"), 2),
    "infonce-tiled": (LossConfig("infonce", "tiled", tile=3), 1),
    "sigmoid-ring": (LossConfig("sigmoid"), 1),
    "sigmoid-gather": ("gather", 1),
    "sigmoid-tiled-accum": (LossConfig("sigmoid", "tiled", tile=3), 4),
    "infonce-captions-accum": (LossConfig("infonce", positives="captions"), 2),
    "infonce-captions-tiled": (LossConfig("infonce", "tiled", tile=3, positives="captions"), 1),
}


def model_and_batch(kind="infonce", seed=0):
    torch.manual_seed(0)
    sigmoid = (
        {"init_logit_bias": -10, "init_logit_scale": math.log(10)} if kind == "sigmoid" else {}
    )
    model = create_model("smoke", **{"text.vocab_size": 259, **sigmoid}).double()
    torch.manual_seed(seed)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, dtype=torch.float64)
    texts = torch.randint(3, 259, (GLOBAL_BATCH, 32))
    texts[torch.arange(GLOBAL_BATCH), torch.randint(5, 30, (GLOBAL_BATCH,))] = 2
    texts[[1, 6]] = texts[0].clone()  # a caption repeated on the same rank and on the other one
    return model, images, texts


def loss_fn_for(variant, rank, texts):
    """The loss of `variant` for a rank holding captions `texts` (b, T)."""
    loss, _ = VARIANTS[variant]
    if loss == "gather":
        return partial(siglip_loss, rank=rank, exchange="gather")
    groups = caption_groups(texts) if loss.positives == "captions" else None
    return partial(contrastive_loss, loss, rank=rank, groups=groups)


def train_steps(wrapped, model, rank, world, steps=range(STEPS), optimizer=None):
    """AdamW steps as train_step takes them: accumulation over 2 micro-batches, tiled loss,
    checkpointed blocks, clipping, logit-scale clamp."""
    optimizer = optimizer or make_optimizer(model, TrainConfig())
    loss_fn = partial(contrastive_loss, LossConfig("infonce", "tiled", tile=3), rank=rank)
    b = GLOBAL_BATCH // world
    for step in steps:
        _, images, texts = model_and_batch(seed=step + 1)
        for group in optimizer.param_groups:
            group["lr"] = 1e-3
        optimizer.zero_grad(set_to_none=True)
        local = slice(rank * b, (rank + 1) * b)
        forward_backward(wrapped, images[local], texts[local], loss_fn, accum_steps=2)
        clip_gradients(model.parameters(), 1.0)
        optimizer.step()
        model.clamp_logit_scale_()
    return optimizer


def counting_allreduce(calls: list, bucket):
    calls.append(bucket.index())
    return allreduce_hook(None, bucket)


def _rank_main(rank, world, store, out, run_dir):
    torch.set_num_threads(1)  # two ranks on two shared cores: more threads only spin
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    results = {}
    b = GLOBAL_BATCH // world
    local = slice(rank * b, (rank + 1) * b)
    for variant, (_, accum) in VARIANTS.items():
        kind = "infonce" if variant.startswith("infonce") else "sigmoid"
        model, images, texts = model_and_batch(kind)
        wrapped = wrap_model(model, [], "ddp", World(rank, world), bf16=False)
        reductions = []  # gradient buckets all-reduced, whatever the micro-batches
        wrapped.register_comm_hook(reductions, counting_allreduce)
        loss_fn = loss_fn_for(variant, rank, texts[local])
        o = forward_backward(wrapped, images[local], texts[local], loss_fn, accum_steps=accum)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        loss = all_reduce_mean(o.loss)
        results[variant] = {"loss": loss, "grads": grads, "reductions": len(reductions)}

    trained = {}
    for strategy in ("ddp", "fsdp"):
        model, _, _ = model_and_batch()
        model.set_grad_checkpointing(True)
        wrapped = wrap_model(model, model.layer_units(), strategy, World(rank, world), bf16=False)
        optimizer = train_steps(wrapped, model, rank, world)
        state = full_model_state(model) if strategy == "fsdp" else model.state_dict()
        results[strategy] = {k: v.clone() for k, v in state.items()}
        trained[strategy] = model, wrapped, optimizer
    model, _, optimizer = trained["fsdp"]
    save_sharded_checkpoint(run_dir, STEPS, model, optimizer, {"model_config": {}}, rank == 0)

    # DDP's one-file checkpoint into a fresh FSDP2 model; then one more step on both
    model, wrapped, optimizer = trained["ddp"]
    saved = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    train_steps(wrapped, model, rank, world, [STEPS], optimizer)
    results["ddp+1"] = model.state_dict()
    model, _, _ = model_and_batch(seed=5)
    wrapped = wrap_model(model, model.layer_units(), "fsdp", World(rank, world), bf16=False)
    optimizer = make_optimizer(model, TrainConfig())
    restore_training_state(wrapped, optimizer, saved)
    train_steps(wrapped, model, rank, world, [STEPS], optimizer)
    results["fsdp-from-ddp+1"] = full_model_state(model)
    if rank == 0:
        torch.save(results, out)
    cleanup()  # both ranks past their work before the group goes


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-ranks")
    out, run_dir = tmp / "rank0.pt", tmp / "run"
    ranks = mp.spawn(
        _rank_main, args=(WORLD, tmp / "store", out, run_dir), nprocs=WORLD, join=False
    )
    deadline = time.monotonic() + 240
    while not ranks.join(timeout=1):  # raises if a rank fails
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            pytest.fail("the two ranks did not finish in 240 s")
    return torch.load(out, weights_only=True), run_dir


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_ranks_match_one_process_dense_on_the_global_batch(two_ranks, variant):
    results, _ = two_ranks
    kind = "infonce" if variant.startswith("infonce") else "sigmoid"
    model, images, texts = model_and_batch(kind)
    loss = LossConfig(
        kind, positives=VARIANTS[variant][0].positives if kind == "infonce" else "pairs"
    )
    groups = caption_groups(texts) if loss.positives == "captions" else None
    reference = forward_backward(
        model, images, texts, partial(contrastive_loss, loss, groups=groups)
    )
    got = results[variant]
    assert got["loss"].item() == pytest.approx(reference.loss.item(), abs=1e-10)
    for name, p in model.named_parameters():
        assert p.grad.abs().max() > 0 or name.endswith("pos_embed"), name
        torch.testing.assert_close(got["grads"][name], p.grad, atol=1e-10, rtol=1e-7, msg=name)


def test_accumulation_reduces_gradients_once_per_step(two_ranks):
    results, _ = two_ranks
    once = results["infonce"]["reductions"]  # one backward: every gradient bucket once
    assert once > 0
    for variant, (_, accum) in VARIANTS.items():
        assert results[variant]["reductions"] == once, (variant, accum)


def test_fsdp2_on_two_gloo_ranks_trains_the_same_parameters_as_ddp(two_ranks):
    results, _ = two_ranks
    fresh, _, _ = model_and_batch()
    moved = 0
    for name, value in results["ddp"].items():
        torch.testing.assert_close(results["fsdp"][name], value, atol=1e-12, rtol=1e-9, msg=name)
        moved += not torch.equal(value, fresh.state_dict()[name])
    assert moved == len(results["ddp"])  # every parameter trained, none left behind


def test_a_one_file_checkpoint_resumes_sharded_with_its_optimizer_state(two_ranks):
    results, _ = two_ranks
    for name, value in results["ddp+1"].items():  # equal after a step: AdamW moments too
        torch.testing.assert_close(
            results["fsdp-from-ddp+1"][name], value, atol=1e-12, rtol=1e-9, msg=name
        )


def test_a_sharded_checkpoint_from_two_ranks_resumes_in_one_process(two_ranks):
    results, run_dir = two_ranks
    saved = load_checkpoint(resolve_checkpoint("latest", run_dir), tensors=False)
    assert saved["sharded"].endswith(f"step-{STEPS:08d}.dcp") and saved["step"] == STEPS
    model, _, _ = model_and_batch()  # plain, no process group
    optimizer = make_optimizer(model, TrainConfig())
    restore_training_state(model, optimizer, saved)
    for name, value in results["fsdp"].items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=0, rtol=0, msg=name)
    # AdamW's moments came back whole, in this optimizer's numbering
    names = [n for g in optimizer.param_groups for n in _names(model, g["params"])]
    by_name = dict(
        zip(names, (optimizer.state[p] for g in optimizer.param_groups for p in g["params"]))
    )
    exp_avg = by_name["visual.proj.weight"]["exp_avg"]
    assert exp_avg.shape == model.visual.proj.weight.shape and exp_avg.abs().max() > 0
    assert by_name["logit_scale"]["step"].item() == STEPS
    # and the whole model reads back for evaluation too
    full = load_checkpoint(saved["sharded"])["model"]
    assert torch.equal(full["text.pos_embed"], results["fsdp"]["text.pos_embed"])


def _names(model, params):
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for p in params]
