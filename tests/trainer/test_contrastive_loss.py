import datetime
import faulthandler
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from trainer.distributed import all_reduce_mean, cleanup
from trainer.loss import clip_loss
from trainer.model import create_model

GLOBAL_BATCH = 8


def test_clip_loss_is_symmetric_cross_entropy_over_the_batch():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 5, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(4, 5, dtype=torch.float64), dim=-1)
    scale = torch.tensor(10.0, dtype=torch.float64)
    expected = 0.0
    for i in range(4):  # -log softmax of the matching pair, both directions, by hand
        row = [scale * img[i] @ txt[j] for j in range(4)]
        col = [scale * txt[i] @ img[j] for j in range(4)]
        expected -= row[i] - torch.logsumexp(torch.stack(row), 0)
        expected -= col[i] - torch.logsumexp(torch.stack(col), 0)
    assert clip_loss(img, txt, scale).item() == pytest.approx(expected.item() / 8, rel=1e-12)


def model_and_batch():
    torch.manual_seed(0)
    model = create_model("smoke", **{"text.vocab_size": 259}).double()
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, dtype=torch.float64)
    texts = torch.randint(3, 259, (GLOBAL_BATCH, 32))
    texts[torch.arange(GLOBAL_BATCH), torch.randint(5, 30, (GLOBAL_BATCH,))] = 2
    return model, images, texts


def loss_and_grads(model, images, texts, rank=0):
    loss = clip_loss(*model(images, texts), rank=rank)
    loss.backward()
    return loss


def _rank_main(rank, world, store, out):
    # a rank still running after 90 s prints where it is and exits (armed until the process
    # ends): a hang fails with its stacks
    faulthandler.dump_traceback_later(90, exit=True)
    torch.set_num_threads(1)  # two ranks on two shared cores: more OpenMP threads only spin
    # a file store: no port to pick (and lose to another process) for the rendezvous
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    model, images, texts = model_and_batch()
    ddp = DistributedDataParallel(model)
    b = GLOBAL_BATCH // world
    local = slice(rank * b, (rank + 1) * b)
    loss = loss_and_grads(ddp, images[local], texts[local], rank)
    mean_loss = all_reduce_mean(loss.detach())
    if rank == 0:
        grads = {n: p.grad for n, p in model.named_parameters()}
        torch.save({"loss": mean_loss, "grads": grads}, out)
    cleanup()  # both ranks past their work before the group goes


def test_two_gloo_ranks_match_one_process_on_the_global_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    ranks = mp.spawn(_rank_main, args=(2, tmp_path / "store", out), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ranks.join(timeout=1):  # raises if a rank fails
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            pytest.fail("the two ranks did not finish in 120 s")
    ddp = torch.load(out, weights_only=True)

    model, images, texts = model_and_batch()
    loss = loss_and_grads(model, images, texts)

    assert ddp["loss"].item() == pytest.approx(loss.item(), abs=1e-10)
    assert loss.item() > 0.1  # a real loss, not a degenerate zero
    for name, p in model.named_parameters():
        assert p.grad.abs().max() > 0 or name.endswith("pos_embed"), name
        torch.testing.assert_close(ddp["grads"][name], p.grad, atol=1e-10, rtol=1e-7, msg=name)
