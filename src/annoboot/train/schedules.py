"""Step-indexed schedules (learning rate, weight decay, EMA momentum)."""

from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (held after)."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total_steps: int, peak: float, end: float, warmup_steps: int) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine down to ``end``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, end)
