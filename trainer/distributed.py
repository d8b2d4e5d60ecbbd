"""Process-group set-up and the collectives the trainer needs.

Launched by torchrun, the environment says who we are (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); launched plainly, we are rank 0 of 1 and nothing is initialized.
The backend follows the device: NCCL on CUDA, Gloo on CPU.

    world = init_distributed("auto")
    features = gather_with_grad(local_features)  # (world * B, D), gradients flow back to owners
    previous = ring_pass(text_features)          # (B, D) of rank - 1; gradients go back round
    wrapped = wrap_model(model, model.layer_units(), "fsdp", world, bf16=False)  # or "ddp"
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 1800) -> World:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return World(rank, world_size, local_rank, dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on every rank -> (world * B, ...) in rank order; backward sums the gradients
    of all ranks into each rank's own slice (so the local-loss formulation is exact)."""
    if not is_distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


class _RingPass(torch.autograd.Function):
    """Send to rank + 1 and receive from rank - 1; backward sends the gradient the other way."""

    @staticmethod
    def forward(ctx, x):
        rank, world = dist.get_rank(), dist.get_world_size()
        return _exchange(x, to=(rank + 1) % world, source=(rank - 1) % world)

    @staticmethod
    def backward(ctx, grad):
        rank, world = dist.get_rank(), dist.get_world_size()
        return _exchange(grad.contiguous(), to=(rank - 1) % world, source=(rank + 1) % world)


def _exchange(x: torch.Tensor, to: int, source: int) -> torch.Tensor:
    received = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, to), dist.P2POp(dist.irecv, received, source)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def ring_pass(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) of rank r -> (B, ...) of rank r - 1 (point to point, round the ring); called
    `world - 1` times, every rank sees every other rank's tensor once (SigLIP's chunked loss)."""
    if not is_distributed():
        return x
    return _RingPass.apply(x.contiguous())


def all_gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on every rank -> (world * B, ...) in rank order, without gradients."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_objects(obj: object) -> list:
    """Picklable `obj` from every rank, in rank order (on every rank)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup(finished: bool = True) -> None:
    """The process group destroyed. After a run that `finished` on every rank, the ranks wait
    for each other first: a rank tearing Gloo down while another still works in the group can
    hang in destroy_process_group (pytorch/pytorch#75097); after an error, no rank waits for
    one that may never come."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(
    model: nn.Module, units: list[nn.Module], strategy: str, world: World, bf16: bool
) -> nn.Module:
    """The module the training loop calls: `model` itself on one rank; a DDP wrapper; or, with
    "fsdp", `model` sharded in place by FSDP2, each unit (transformer block, residual stage)
    on its own, then the rest. FSDP2 casts parameters to bf16 for compute and reduces in fp32."""
    if world.world_size == 1:
        return model
    if strategy == "ddp":
        return DistributedDataParallel(model)
    policy = MixedPrecisionPolicy()
    if bf16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    return fully_shard(model, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Backward passes inside accumulate gradients locally when not `enabled`: DDP's no_sync,
    FSDP2's set_requires_gradient_sync(False); the next synced backward reduces the sum."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def clip_gradients(parameters, max_norm: float) -> float:
    """Clip the global gradient norm (over all shards under FSDP2); the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm if max_norm > 0 else math.inf)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return norm.item()
