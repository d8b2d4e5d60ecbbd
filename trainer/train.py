"""Train a CLIP dual encoder on WebDataset shards: the loop, readable in one sitting.

    python -m trainer train --data 'shards/{00000..00007}.tar' --output runs/tiny --model tiny --steps 300
    torchrun --nproc-per-node 4 -m trainer train --data out/manifest.json --output runs/b16 --model base
    python -m trainer train ... --resume latest      # continue exactly where RUN/checkpoints stops

One process per rank (torchrun), DDP over Gloo (CPU) or NCCL (GPU), the local-loss InfoNCE
(trainer/loss.py), AdamW without decay on gains/biases/embeddings/logit scale, linear warmup then
cosine, gradient clipping, bf16 autocast on GPU. Non-finite steps are skipped and counted; too
many in a row stop the run with the last good checkpoint intact. SIGTERM saves a checkpoint
and exits (preemption).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from trainer.checkpoint import (
    capture_rng,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng,
    save_checkpoint,
)
from trainer.cli import build_train_parser, run_config_from_args, user_error_message
from trainer.configs import ModelConfig, RunConfig, TrainConfig, UserError, model_config_from_dict
from trainer.data import PositionTracker, build_loader, check_data, new_position
from trainer.distributed import (
    World,
    all_gather_objects,
    all_reduce_mean,
    any_rank,
    barrier,
    cleanup,
    init_distributed,
)
from trainer.loss import batch_accuracy, clip_loss
from trainer.model import CLIP
from trainer.monitor import MetricsLog, SeenKeys, StallWatchdog, truncate_seen_keys
from trainer.position import DataPosition, Topology
from trainer.schedule import lr_at
from trainer.sources import resolve_sources, total_samples
from trainer.tokenizer import CaptionTokenizer, byte_tokenizer
from trainer.transforms import normalize

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # 128 + SIGTERM: checkpoint saved, run again with --resume latest


def main(argv: list[str] | None = None) -> int:
    args = build_train_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return train(run_config_from_args(args))
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        print(f"webpairs train: error: {message}", file=sys.stderr)
        return 2


def make_optimizer(model: CLIP, cfg: TrainConfig) -> torch.optim.AdamW:
    no_decay = model.no_weight_decay()
    decay = [p for n, p in model.named_parameters() if n not in no_decay]
    rest = [p for n, p in model.named_parameters() if n in no_decay]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps)


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_threads(requested: int, workers: int, device: torch.device) -> int | None:
    """Intra-op threads for this rank. On CPU, OpenMP threads that compete with the loader
    workers for cores spin, and a small model then trains several times slower
    (bench/RESULTS-trainer.md); so by default a rank takes only the cores the workers leave."""
    if requested > 0:
        return requested
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // ranks_here - workers)


def seed_rank(seed: int, rank: int, step: int) -> None:
    """Distinct, reproducible random state per rank (data randomness has its own seeds)."""
    torch.manual_seed(seed * 1_000_003 + rank * 7919 + step)


def resolve_model_config(cfg: RunConfig, tokenizer: CaptionTokenizer) -> ModelConfig:
    """The model config with what the tokenizer decides (vocab, special ids) filled in, and
    the data config's image size / context length taken from it."""
    model_cfg = cfg.model
    model_cfg.text.vocab_size = tokenizer.vocab_size
    model_cfg.text.eot_token_id = tokenizer.eot_id
    model_cfg.text.pad_token_id = tokenizer.pad_id
    cfg.data.image_size = model_cfg.vision.image_size
    cfg.data.context_length = model_cfg.text.context_length
    return model_cfg


def train(cfg: RunConfig) -> int:
    world = init_distributed(cfg.train.device)
    threads = cpu_threads(cfg.train.threads, cfg.data.workers, world.device)
    if threads:
        torch.set_num_threads(threads)
    try:
        return run(cfg, world)
    finally:
        cleanup()


@dataclass
class Session:
    """What the loop works on, built by `setup` from scratch or from a checkpoint."""

    model: CLIP
    ddp: torch.nn.Module  # `model`, wrapped in DDP when there are several ranks
    optimizer: torch.optim.Optimizer
    tokenizer: CaptionTokenizer
    shards: list
    position: DataPosition
    step: int = 0
    nonfinite_total: int = 0
    resumed: bool = False


def setup(cfg: RunConfig, world: World) -> Session:
    t, run_dir = cfg.train, Path(cfg.train.output)
    saved = load_checkpoint(resolve_checkpoint(t.resume, run_dir)) if t.resume else None
    if saved is not None:
        cfg.model = model_config_from_dict(saved["model_config"])  # the checkpoint decides
        tokenizer = CaptionTokenizer.from_json(saved["tokenizer"], cfg.model.text.context_length)
    elif t.tokenizer:
        tokenizer = CaptionTokenizer.from_file(t.tokenizer, cfg.model.text.context_length)
    else:
        tokenizer = CaptionTokenizer(byte_tokenizer(), cfg.model.text.context_length)
    model_cfg = resolve_model_config(cfg, tokenizer)

    shards = resolve_sources(cfg.data.data)
    topology = Topology(world.world_size, max(1, cfg.data.workers))
    check_data(shards, cfg.data, topology, tokenizer)

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = CLIP(model_cfg).to(world.device)
    optimizer = make_optimizer(model, t)
    position = new_position(shards, cfg.data, topology)
    session = Session(model, model, optimizer, tokenizer, shards, position)
    if saved is None:
        seed_rank(t.seed, world.rank, 0)
    else:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        session.step, session.nonfinite_total = saved["step"], saved["nonfinite_steps"]
        session.position = resume_position(saved["data"], position, topology)
        session.resumed = True
        if len(saved["rng"]) == world.world_size:
            restore_rng(saved["rng"][world.rank])
        else:
            seed_rank(t.seed, world.rank, session.step)
        if world.is_main:
            truncate_seen_keys(run_dir, session.step)
    if world.world_size > 1:
        session.ddp = DistributedDataParallel(model)
    barrier()
    return session


@dataclass
class StepResult:
    loss: float  # mean over ranks
    grad_norm: float  # before clipping
    finite: bool  # False: the update was skipped
    logit_scale: torch.Tensor
    image_features: torch.Tensor  # (b, D) of this rank
    text_features: torch.Tensor  # (b, D)


def train_step(s: Session, batch: dict, lr: float, t: TrainConfig, world: World, autocast):
    images = normalize(batch["image"].to(world.device, non_blocking=True))  # (b, 3, S, S)
    texts = batch["text"].to(world.device, non_blocking=True)  # (b, T)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        image_features, text_features, logit_scale = s.ddp(images, texts)
        loss = clip_loss(image_features, text_features, logit_scale, world.rank)
    if s.step + 1 in t.debug_nan_steps:
        loss = loss * float("nan")
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), max_norm).item()
    # the same decision on every rank: the loss is all-reduced here, the gradients by DDP
    mean_loss = all_reduce_mean(loss.detach().float()).item()
    finite = math.isfinite(mean_loss) and math.isfinite(grad_norm)
    if finite:
        s.optimizer.step()
        s.model.clamp_logit_scale_()
    return StepResult(mean_loss, grad_norm, finite, logit_scale, image_features, text_features)


def save(s: Session, tracker: PositionTracker, world: World, t: TrainConfig) -> Path | None:
    """Checkpoint from rank 0 with every rank's data position and random state."""
    data = tracker.merged(all_gather_objects(tracker.local_state()))
    rngs = all_gather_objects(capture_rng())
    path = None
    if world.is_main:
        state = {
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "model_config": dataclasses.asdict(s.model.cfg),
            "tokenizer": s.tokenizer.to_json(),
            "data": data.state_dict(),
            "rng": rngs,
            "nonfinite_steps": s.nonfinite_total,
        }
        path = save_checkpoint(t.output, s.step, state, keep=t.keep_checkpoints)
        log.info("saved %s", path)
    barrier()
    return path


def run(cfg: RunConfig, world: World) -> int:
    t, run_dir = cfg.train, Path(cfg.train.output)
    s = setup(cfg, world)
    loader = build_loader(s.shards, cfg.data, s.tokenizer, s.position, world.rank)
    tracker = PositionTracker(s.position, world.rank)
    metrics = MetricsLog(run_dir, enabled=world.is_main)
    global_batch = cfg.data.batch_size * world.world_size
    if world.is_main:
        save_run_config(run_dir, cfg)
        log.info(
            "model %s: %.2fM parameters; %d shards; %d ranks x %d loader workers on %s",
            s.model.cfg.name,
            sum(p.numel() for p in s.model.parameters()) / 1e6,
            len(s.shards),
            world.world_size,
            cfg.data.workers,
            world.device,
        )
        per_epoch = total_samples(s.shards)
        if per_epoch is not None:  # known from a manifest
            log.info("an epoch is %d samples = %.1f steps", per_epoch, per_epoch / global_batch)
        if s.resumed:
            metrics.write({"event": "resume", "step": s.step, "world_size": world.world_size})
    seen_keys = SeenKeys(run_dir, world.rank) if t.debug_seen_keys else None
    autocast = autocast_for(t.precision, world.device)
    nonfinite_run, window_start, window_steps = 0, time.monotonic(), 0
    batches = iter(loader)
    stop, watchdog = StopSignal(), StallWatchdog(t.stall_timeout, world.rank)
    with metrics, stop, watchdog:
        while s.step < t.steps:
            batch = next(batches)
            tracker.update(batch["state"])
            lr = lr_at(s.step, cfg.schedule)
            result = train_step(s, batch, lr, t, world, autocast)
            s.step += 1
            window_steps += 1
            watchdog.beat(s.step)
            if seen_keys is not None:
                seen_keys.write(s.step, batch)
            if result.finite:
                nonfinite_run = 0
            else:
                nonfinite_run += 1
                s.nonfinite_total += 1
                log.warning("step %d: non-finite loss or gradients, update skipped", s.step)
                if nonfinite_run >= t.max_nonfinite:
                    log.error(
                        "stopping: %d non-finite steps in a row; the last good checkpoint "
                        "is intact in %s",
                        nonfinite_run,
                        run_dir / "checkpoints",
                    )
                    return 1

            if s.step % t.log_every == 0 or s.step == t.steps:
                elapsed = time.monotonic() - window_start
                record = progress_record(s, result, lr, window_steps * global_batch / elapsed)
                epoch = int(batch["sample"][:, 0].min())  # of this rank's last batch
                metrics.write({**record, "epoch": epoch, "skipped": tracker.skipped()})
                if world.is_main:
                    log.info(
                        "step %d/%d loss %.4f lr %.3g temperature %.4f %.1f samples/s",
                        s.step,
                        t.steps,
                        result.loss,
                        lr,
                        record["temperature"],
                        record["samples_per_s"],
                    )
                window_start, window_steps = time.monotonic(), 0
            if cfg.eval.every and s.step % cfg.eval.every == 0:
                evaluate_during_training(s.model, s.tokenizer, cfg, s.step, world, metrics)
            preempted = any_rank(stop.requested, world.device)
            if s.step % t.checkpoint_every == 0 or s.step == t.steps or preempted:
                save(s, tracker, world, t)
            if preempted:
                log.warning("stopped by SIGTERM at step %d; resume with --resume latest", s.step)
                return EXIT_PREEMPTED
            if t.debug_step_delay:
                time.sleep(t.debug_step_delay)
    return 0


def progress_record(s: Session, r: StepResult, lr: float, samples_per_s: float) -> dict:
    scale = r.logit_scale.item()
    return {
        "step": s.step,
        "loss": r.loss,
        "lr": lr,
        "logit_scale": scale,
        "temperature": 1.0 / scale,
        "grad_norm": r.grad_norm,
        "batch_accuracy": batch_accuracy(r.image_features.float(), r.text_features.float()),
        "samples_per_s": samples_per_s,
        "nonfinite_steps": s.nonfinite_total,
    }


def resume_position(saved: dict, fresh: DataPosition, topology: Topology) -> DataPosition:
    position = DataPosition.from_state_dict(saved)
    if position.fingerprint != fresh.fingerprint:
        if position.plan.num_shards != fresh.plan.num_shards:
            raise UserError(
                f"--data resolves to {fresh.plan.num_shards} shards, the checkpoint was trained on "
                f"{position.plan.num_shards}: the data position cannot be carried over"
            )
        log.warning("shard URLs differ from the checkpoint's; assuming the same shards, moved")
    if position.topology != topology:
        log.info(
            "redistributing the data position from %d x %d to %d x %d loader streams",
            position.topology.world,
            position.topology.workers,
            topology.world,
            topology.workers,
        )
    return position.for_topology(topology)


def evaluate_during_training(model, tokenizer, cfg: RunConfig, step, world, metrics) -> None:
    if world.is_main:
        from trainer.evaluate import evaluate

        model.eval()
        results = evaluate(model, tokenizer, cfg.eval, cfg.model.vision.image_size, world.device)
        model.train()
        metrics.write({"step": step, **{f"eval/{k}": v for k, v in results.items()}})
        log.info("step %d eval: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    barrier()


def save_run_config(run_dir: Path, cfg: RunConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))


class StopSignal:
    """Records SIGTERM (the scheduler's preemption notice) instead of dying mid-step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopSignal:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
