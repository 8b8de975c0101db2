"""Learning-rate schedules of the MSA training: ALMT's published warm-up + cosine, or a constant rate.

ALMT (Haoyu-ha/ALMT ``core/scheduler.py``, also MMSA's ALMT trainer) steps once per epoch: a linear
warm-up from 0 over the first 10% of the epochs (the first epoch runs at lr 0), then cosine
annealing with ``T_max`` = 90% of the epochs, starting again from the full rate. Its chained
``GradualWarmupScheduler`` + ``CosineAnnealingLR`` reduce to the closed form below.
"""

from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("warmup-cosine", "constant")


def warmup_cosine_factor(epochs: int) -> Callable[[int], float]:
    """Multiplier of the base rate for epoch ``e`` (0-based) of an ``epochs``-long ALMT run."""
    warmup, t_max = 0.1 * epochs, 0.9 * epochs
    first_cosine = math.floor(warmup) + 1  # the first epoch past the warm-up runs at the full rate

    def factor(e: int) -> float:
        if e <= warmup:
            return e / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (e - first_cosine) / t_max))

    return factor


def lr_factor(schedule: str, epochs: int) -> Callable[[int], float]:
    """The per-epoch multiplier of ``schedule`` (one of :data:`SCHEDULES`)."""
    if schedule == "warmup-cosine":
        return warmup_cosine_factor(epochs)
    if schedule == "constant":
        return lambda e: 1.0
    raise ValueError(f"unknown schedule {schedule!r}: choose from {list(SCHEDULES)}")
