"""The annotation-bootstrapping (TD) loss.

Notation (method.md section 2): for an image with V sampled views, the value decoder predicts,
from source view s and the move to target view t, a distribution over annotations
Q(l | x_s, a_{s->t}). Its regression target is

    y(l | t) = (1 - gamma) * p_ema(l | x_t) + gamma * AGG_{t' != t} Q_ema(l | x_t, a_{t->t'})

and the loss is the soft cross-entropy from y (no gradient) to Q, averaged over view pairs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-sum_l y_l log softmax(logits)_l per row; (..., L) x (..., L) -> (...)."""
    return -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def aggregate_next_values(next_value_probs: torch.Tensor, aggregate: str) -> torch.Tensor:
    """AGG over the next moves from each view, excluding the move to itself.

    next_value_probs: (N, V, V, L), Q_ema(l | x_t, a_{t->t'}) indexed [image, t, t', l].
    aggregate: 'mean', or 'max' (max over t' per annotation, then renormalised over l so the
    result stays a distribution).
    Returns (N, V, L).
    """
    v = next_value_probs.shape[1]
    if v < 2:
        raise ValueError("bootstrapping through next values needs at least 2 views per image")
    others = ~torch.eye(v, dtype=torch.bool, device=next_value_probs.device)  # (V, V) t' != t
    mask = others.view(1, v, v, 1)
    if aggregate == "mean":
        return (next_value_probs * mask).sum(2) / (v - 1)
    if aggregate == "max":
        peak = next_value_probs.masked_fill(~mask, float("-inf")).amax(2)
        return peak / peak.sum(-1, keepdim=True)
    raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")


def td_target(
    reward_probs: torch.Tensor,
    next_value_probs: torch.Tensor | None,
    gamma: float,
    aggregate: str = "mean",
) -> torch.Tensor:
    """y(l | t) = (1 - gamma) p_ema(l | x_t) + gamma AGG Q_ema(l | x_t, .).

    reward_probs: (N, V, L) the EMA base model's annotation distribution on each view.
    next_value_probs: (N, V, V, L) EMA value predictions from each view, or None when gamma=0.
    Returns (N, V, L), a distribution per target view.
    """
    if gamma == 0:
        return reward_probs
    if next_value_probs is None:
        raise ValueError("gamma > 0 needs next_value_probs")
    return (1 - gamma) * reward_probs + gamma * aggregate_next_values(next_value_probs, aggregate)


def bootstrap_loss(pred_logits: torch.Tensor, target_probs: torch.Tensor, drop_self_pairs: bool = False) -> torch.Tensor:
    """Mean soft cross-entropy over all (source, target) view pairs.

    pred_logits: (N, V_source, V_target, L) value-decoder logits over annotations.
    target_probs: (N, V_target, L) TD targets (treated as constants).
    drop_self_pairs: leave out s == t (the move "stay here").
    """
    target = target_probs.detach().unsqueeze(1).expand_as(pred_logits)
    per_pair = soft_cross_entropy(pred_logits, target)  # (N, V, V)
    if not drop_self_pairs:
        return per_pair.mean()
    v = per_pair.shape[1]
    keep = ~torch.eye(v, dtype=torch.bool, device=per_pair.device)
    return per_pair[:, keep].mean()


def agreement_by_iou(
    pred_logits: torch.Tensor,
    target_probs: torch.Tensor,
    iou: torch.Tensor,
    edges: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 agreement of predicted and target annotation, bucketed by source/target IoU.

    pred_logits: (N, V, V, L); target_probs: (N, V, L); iou: (N, V, V).
    edges: increasing bucket edges, e.g. (0, 1e-6, 0.2, 0.5, 0.8, 1.0001); bucket k holds
    edges[k] <= iou < edges[k+1].
    Returns (hits, counts), each (len(edges) - 1,) float, summed over pairs; stays on device.
    """
    agree = (pred_logits.argmax(-1) == target_probs.argmax(-1).unsqueeze(1)).float().flatten()
    iou = iou.flatten()
    n = len(edges) - 1
    # Comparisons with Python floats: no per-step host-to-device copy of the edges.
    bucket = sum((iou >= edge).long() for edge in edges[1:-1])
    valid = (iou >= edges[0]) & (iou < edges[-1])
    hits = torch.zeros(n, device=iou.device).index_add_(0, bucket, agree * valid)
    counts = torch.zeros(n, device=iou.device).index_add_(0, bucket, valid.float())
    return hits, counts
