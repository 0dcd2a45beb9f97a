"""Linear probe on frozen pooled features, with the learning rate chosen on held-out data.

The protocol of :mod:`annoboot.eval.fitting`: a grid of zero-initialised linear heads, one per
learning rate, trained in one pass on standardised features; the head best on a seeded
held-out part of the train split is reported on the test split.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
from torch import nn

from annoboot.eval.fitting import SINGLE_LABEL, check_probe_inputs, fit_and_select
from annoboot.eval.registry import register_probe, require_learning_rates, require_positive


def standardise(train_x: torch.Tensor, test_x: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, D), (M, D) features -> float32 on ``device``, standardised with the train split's
    mean and std (no labels used); constant features become 0."""
    train_x = train_x.to(device, torch.float32).flatten(1)
    test_x = test_x.to(device, torch.float32).flatten(1)
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False).clamp_min(1e-6)
    return (train_x - mean) / std, (test_x - mean) / std


def zero_linear_heads(in_dim: int, out_dim: int, count: int, device: torch.device) -> nn.ModuleList:
    """``count`` linear heads starting at zero: the problem is convex, and no random init to seed."""
    heads = nn.ModuleList(nn.Linear(in_dim, out_dim) for _ in range(count)).to(device)
    for head in heads:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return heads


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    lrs: Sequence[float] = (1e-3, 3e-3, 1e-2),
    epochs: int = 30,
    batch_size: int = 1024,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    weight_decay: float = 0.0,
    progress: bool = False,
    task: Any = SINGLE_LABEL,
) -> Dict[str, Any]:
    """Train one linear classifier per learning rate on frozen features; report the best.

    Features are standardised with the mean and std of the whole train split (no labels are
    used for that). ``val_fraction`` of the train split (seeded) is held out; every head
    (zero-initialised, AdamW, cosine decay) trains on the rest in one shared pass, and the head
    with the best val accuracy is evaluated on the test split. Deterministic for a seed.

    Args:
        train_x: (N, D) features; train_y: (N,) int64 in [0, num_classes).
        test_x: (M, D); test_y: (M,).
        num_classes: C.
        lrs: the learning-rate grid.
        epochs, batch_size: passes over the fit split and rows per step.
        val_fraction: share of the train split held out to choose the learning rate.
        seed: fixes the split and the batch order.
        device: where training runs (features are copied there once).
        weight_decay: AdamW weight decay.
        progress: show a progress bar while the heads train.
        task: ``fitting.SINGLE_LABEL``, or ``multilabel.MULTI_LABEL`` with (N, C) multi-hot targets
            and C = num_classes (keys then "test_map", "test_f1", "val_map", ...).

    Returns:
        {"test_acc": %, "val_acc": %, "best_lr": float, "val_acc_by_lr": {"0.001": %, ...}}.

    Example:
        >>> x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0)); y = (x[:, 0] > 0).long()
        >>> linear_probe(x[:300], y[:300], x[300:], y[300:], 2, epochs=20, batch_size=32)["test_acc"] > 90
        True
    """
    check_probe_inputs(train_x, train_y, test_x, test_y, lrs)
    device = torch.device(device)
    train_x, test_x = standardise(train_x, test_x, device)
    heads = zero_linear_heads(train_x.shape[1], num_classes, len(lrs), device)
    return fit_and_select(heads, lrs, train_x, task.targets(train_y, device), test_x, task.targets(test_y, device),
                          epochs, batch_size, val_fraction, seed, device, weight_decay, task,
                          task.chunk_size(batch_size, tokens=False), "linear probe" if progress else None)


def _check_linear_options(cfg: Any) -> None:
    require_positive(cfg, "linear_epochs")
    require_learning_rates(cfg, "linear_lrs")


@register_probe("linear", check=_check_linear_options)
def fit_linear_probe(train, test, train_targets, test_targets, num_outputs: int, cfg: Any, common: Dict) -> Tuple[Dict, Dict]:
    """The registered probe "linear" on pooled features (eval.linear_lrs, eval.linear_epochs)."""
    outcome = linear_probe(train.pooled, train_targets, test.pooled, test_targets, num_outputs, tuple(cfg.linear_lrs),
                           cfg.linear_epochs, **common)
    return outcome, {"epochs": cfg.linear_epochs, **outcome}


__all__ = ["fit_linear_probe", "linear_probe", "standardise", "zero_linear_heads"]
