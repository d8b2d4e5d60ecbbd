"""Learning-rate schedule: linear warmup, then cosine decay to `min_lr`. A pure function.

lr = lr_at(step, cfg.schedule)
"""

from __future__ import annotations

import math

from trainer.configs import ScheduleConfig


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
