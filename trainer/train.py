"""Train a CLIP dual encoder on WebDataset shards: the loop, readable in one sitting.

    python -m trainer train --data 'shards/{00000..00007}.tar' --output runs/tiny --model tiny --steps 300
    torchrun --nproc-per-node 4 -m trainer train --data out/manifest.json --output runs/b16 --model base
    python -m trainer train ... --resume latest      # continue exactly where RUN/checkpoints stops

BASIC-style, the contrastive batch is independent of device memory; the flags combine freely:

    torchrun --nproc-per-node 8 -m trainer train --data out/manifest.json --output runs/basic \
        --model base --batch-size 8192 --micro-batch-size 256 --loss-impl tiled --grad-checkpointing \
        --strategy fsdp --precision bf16 --image-size 112 --context-length 16 --patch-dropout 0.5 \
        --finetune-at 95000 --finetune-image-size 224 --finetune-context-length 77 --steps 100000

One process per rank (torchrun), DDP or FSDP2 over Gloo (CPU) or NCCL (GPU), the local-loss
InfoNCE or SigLIP's sigmoid loss (trainer/loss.py), contrastive gradient accumulation
(trainer/accum.py), AdamW without decay on gains/biases/embeddings/logit scale, linear warmup
then cosine, gradient clipping, bf16 autocast on GPU. Non-finite steps are skipped and counted;
too many in a row stop the run with the last good checkpoint intact. SIGTERM saves a
checkpoint and exits (preemption).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from trainer.accum import forward_backward
from trainer.configs import RunConfig, TrainConfig
from trainer.data import build_loader
from trainer.distributed import (
    World,
    all_reduce_mean,
    any_rank,
    barrier,
    cleanup,
    clip_gradients,
    init_distributed,
)
from trainer.loss import batch_accuracy, caption_groups, contrastive_loss
from trainer.monitor import MetricsLog, RemainingTime, SeenKeys, StallWatchdog, format_duration
from trainer.position import DataPosition, PositionTracker
from trainer.schedule import data_at, in_finetune_phase, input_sizes_at, lr_at
from trainer.session import Session, full_model, save, setup, tokenizer_for, uses_bf16
from trainer.sources import total_samples
from trainer.transforms import normalize
from trainer.validation import ValidationSet, load_validation, validation_metrics

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # 128 + SIGTERM: checkpoint saved, run again with --resume latest


def autocast_for(precision: str, device: torch.device):
    if uses_bf16(precision, device):
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


def train(cfg: RunConfig) -> int:
    world = init_distributed(cfg.train.device)
    threads = cpu_threads(cfg.train.threads, cfg.data.workers, world.device)
    if threads:
        torch.set_num_threads(threads)
    try:
        result = run(cfg, world)
    except BaseException:
        cleanup(finished=False)
        raise
    cleanup()
    return result


@dataclass
class StepResult:
    loss: float  # mean over ranks
    grad_norm: float  # before clipping
    finite: bool  # False: the update was skipped
    logit_scale: torch.Tensor
    image_features: torch.Tensor  # (b, D) of this rank
    text_features: torch.Tensor  # (b, D)


def train_step(s: Session, batch: dict, lr: float, t: TrainConfig, world: World, autocast):
    images = batch["image"].to(world.device, non_blocking=True)  # (b, 3, S, S) uint8
    texts = batch["text"].to(world.device, non_blocking=True)  # (b, T)
    for group in s.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # --lr-image / --lr-text
    groups = caption_groups(texts) if s.loss.positives == "captions" else None  # (B,)
    loss_fn = partial(contrastive_loss, s.loss, rank=world.rank, groups=groups)
    if s.step + 1 in t.debug_nan_steps:
        loss_fn = partial(_nan_loss, loss_fn)
    s.optimizer.zero_grad(set_to_none=True)
    out = forward_backward(s.wrapped, images, texts, loss_fn, t.accum_steps, autocast, normalize)
    grad_norm = clip_gradients(s.model.parameters(), t.grad_clip)
    # the same decision on every rank: the loss is all-reduced here, the gradients by DDP/FSDP
    mean_loss = all_reduce_mean(out.loss.float()).item()
    finite = math.isfinite(mean_loss) and math.isfinite(grad_norm)
    if finite:
        s.optimizer.step()
        s.model.clamp_logit_scale_()
    return StepResult(
        mean_loss, grad_norm, finite, out.logit_scale, out.image_features, out.text_features
    )


def _nan_loss(loss_fn, *outputs):
    return loss_fn(*outputs) * float("nan")


def open_batches(s: Session, cfg: RunConfig, position: DataPosition, world: World):
    """This rank's batches from `position` on, at the input sizes of step `s.step`."""
    data = data_at(s.step, cfg.schedule, cfg.data, s.model.cfg)
    tokenizer = tokenizer_for(s.tokenizer, data.context_length)
    if in_finetune_phase(s.step, cfg.schedule):
        s.model.set_patch_dropout(0.0)  # the final phase sees whole images (FLIP)
    return iter(build_loader(s.shards, data, tokenizer, position, world.rank))


def run(cfg: RunConfig, world: World) -> int:
    t, run_dir = cfg.train, Path(cfg.train.output)
    s = setup(cfg, world)
    tracker = PositionTracker(s.position, world.rank)
    metrics = MetricsLog(
        run_dir,
        enabled=world.is_main,
        report_to=t.report_to,
        wandb_project=t.wandb_project,
        run_name=t.run_name,
        config=dataclasses.asdict(cfg),
    )
    global_batch = cfg.data.batch_size * world.world_size
    if world.is_main:
        data = data_at(s.step, cfg.schedule, cfg.data, s.model.cfg)
        save_run_config(run_dir, dataclasses.replace(cfg, model=s.model.cfg, data=data))
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
        if per_epoch is not None:  # known from a manifest or sizes.json
            log.info("an epoch is %d samples = %.1f steps", per_epoch, per_epoch / global_batch)
        if s.resumed:
            metrics.write({"event": "resume", "step": s.step, "world_size": world.world_size})
    seen_keys = SeenKeys(run_dir, world.rank) if t.debug_seen_keys else None
    held_out = load_held_out(s, cfg, world)
    autocast = autocast_for(t.precision, world.device)
    nonfinite_run, window_start, window_steps = 0, time.monotonic(), 0
    eta = RemainingTime(s.step, t.steps)
    finetuning = in_finetune_phase(s.step, cfg.schedule)
    batches = open_batches(s, cfg, s.position, world)
    stop, watchdog = StopSignal(), StallWatchdog(t.stall_timeout, world.rank)
    with metrics, stop, watchdog:
        while s.step < t.steps:
            if in_finetune_phase(s.step, cfg.schedule) and not finetuning:  # --finetune-at
                finetuning = True
                sizes = input_sizes_at(s.step, cfg.schedule, s.model.cfg)
                if world.is_main:
                    log.info(
                        "step %d: finetuning on %d px images, %d-token captions", s.step, *sizes
                    )
                # a new loader at the full sizes, from the last batch trained on
                batches = open_batches(s, cfg, tracker.merged([tracker.local_state()]), world)
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
                record["eta_s"] = eta.seconds(s.step)
                epoch = int(batch["sample"][:, 0].min())  # of this rank's last batch
                metrics.write({**record, "epoch": epoch, "skipped": tracker.skipped()})
                if world.is_main:
                    log.info(
                        "step %d/%d loss %.4f lr %.3g temperature %.4f %.1f samples/s ETA %s",
                        s.step,
                        t.steps,
                        result.loss,
                        lr,
                        record["temperature"],
                        record["samples_per_s"],
                        format_duration(record["eta_s"]),
                    )
                window_start, window_steps = time.monotonic(), 0
            last = s.step == t.steps
            if (cfg.eval.every and s.step % cfg.eval.every == 0) or (last and held_out):
                evaluate_during_training(s, cfg, world, metrics, held_out)
            preempted = any_rank(stop.requested, world.device)
            if s.step % t.checkpoint_every == 0 or last or preempted:
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


def load_held_out(s: Session, cfg: RunConfig, world: World) -> ValidationSet | bool:
    """The --val-fraction pairs on rank 0 (True on the others: they take part in evaluation),
    at the model's full image size; False without --val-fraction."""
    if not cfg.data.val_fraction:
        return False
    if not world.is_main:
        return True
    data = dataclasses.replace(cfg.data, image_size=s.model.cfg.vision.image_size)
    held_out = load_validation(s.shards, data, s.tokenizer)
    log.info(
        "validation: %d held-out pairs (--val-fraction %g)", len(held_out.keys), data.val_fraction
    )
    return held_out


def evaluate_during_training(
    s: Session, cfg: RunConfig, world: World, metrics, held_out: ValidationSet | bool = False
) -> None:
    model = full_model(s, world)  # FSDP2: every rank gathers the shards, rank 0 evaluates
    if world.is_main:
        from trainer.evaluate import evaluate

        results, details = {}, {}
        if isinstance(held_out, ValidationSet):
            batch = cfg.data.batch_size * world.world_size
            results.update(validation_metrics(model, held_out, batch, world.device))
        model.eval()
        size = s.model.cfg.vision.image_size
        if cfg.eval.zeroshot or cfg.eval.retrieval:
            eval_results = evaluate(model, s.tokenizer, cfg.eval, size, world.device, details)
            results.update({f"eval/{k}": v for k, v in eval_results.items()})
        model.train()
        metrics.write({"step": s.step, **results})
        if "prompts" in details:  # what the zero-shot figures were measured with
            path = Path(cfg.train.output) / "zeroshot-prompts.json"
            path.write_text(json.dumps(details["prompts"], indent=1))
        log.info("step %d eval: %s", s.step, ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
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
