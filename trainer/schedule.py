"""Schedules, as pure functions of the step: the learning rate (linear warmup, then cosine decay
to `min_lr`) and the input sizes (CLIPA / FLIP: shorter sequences, then full length). This module
is the one place that decides which image size and caption length a step trains on.

lr = lr_at(step, cfg.schedule)
image_size, context_length = input_sizes_at(step, cfg.schedule, model_cfg)
data_cfg = data_at(step, cfg.schedule, cfg.data, model_cfg)  # the loader's config at that step
"""

from __future__ import annotations

import dataclasses
import math

from trainer.configs import DataConfig, ModelConfig, ScheduleConfig, UserError, check_image_size


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def in_finetune_phase(step: int, cfg: ScheduleConfig) -> bool:
    """Is step `step` (0-based) in the final phase at full length (no patch dropout)?"""
    return 0 < cfg.finetune_at <= step


def input_sizes_at(step: int, cfg: ScheduleConfig, model: ModelConfig) -> tuple[int, int]:
    """(image size, caption tokens) the batches of step `step` have."""
    if in_finetune_phase(step, cfg):
        return model.vision.image_size, model.text.context_length
    return (
        cfg.image_size or model.vision.image_size,
        cfg.context_length or model.text.context_length,
    )


def data_at(step: int, cfg: ScheduleConfig, data: DataConfig, model: ModelConfig) -> DataConfig:
    """`data` with the image size and caption length of step `step`."""
    image_size, context_length = input_sizes_at(step, cfg, model)
    return dataclasses.replace(data, image_size=image_size, context_length=context_length)


def check_input_sizes(schedule: ScheduleConfig, model: ModelConfig) -> None:
    """The sizes before the finetune phase must suit the model (checked again on resume)."""
    if schedule.image_size:
        check_image_size(model, schedule.image_size)
    context = schedule.context_length
    if context and not 3 <= context <= model.text.context_length:
        raise UserError(
            f"context length {context} must be from 3 to the model's {model.text.context_length}"
        )
