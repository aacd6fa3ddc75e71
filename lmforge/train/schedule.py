"""Learning-rate schedules: a multiplier of each parameter group's base learning rate."""

from __future__ import annotations

import math

from lmforge.train.config import ScheduleConfig


def lr_multiplier(config: ScheduleConfig, step: int, progress: float) -> float:
    """Multiplier for optimizer step `step` (0-based) when `progress` (0..1) of the run is done.

    Linear warmup over the first `warmup_steps` steps, times a decay that depends on progress:
      cosine:   1 -> min_lr_frac along half a cosine over the whole run
      linear:   1 -> min_lr_frac in a straight line over the whole run
      wsd:      1 (stable) until 1 - decay_frac, then linear to min_lr_frac
      constant: 1
    """
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    floor = config.min_lr_frac
    if config.name == "cosine":
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    elif config.name == "linear":
        decay = 1 - (1 - floor) * p
    elif config.name == "wsd":
        start = 1 - config.decay_frac
        decay = 1.0 if p <= start else 1 - (1 - floor) * (p - start) / max(config.decay_frac, 1e-12)
    elif config.name == "constant":
        decay = 1.0
    else:
        raise ValueError(f"unknown schedule {config.name!r}")
    return warmup * decay


def fraction_done(*budgets: tuple[float, float | None]) -> float:
    """How much of a run is done, the `progress` above: the furthest of its (used, limit) budgets
    (steps, tokens, epochs, seconds; a None limit is no budget). 1.0 or more means finished."""
    parts = [used / limit for used, limit in budgets if limit is not None]
    if not parts:
        raise ValueError("a run needs at least one budget (steps, tokens, epochs or seconds)")
    return max(parts)
