"""Linear probe on frozen pooled features, with the learning rate chosen on held-out data.

As in dinov2's linear evaluation, a grid of heads (here: one per learning rate) is trained in
the same pass over the mini-batches, so the grid costs little more than a single head: the
features are read once per step and only the (D x C) matmuls are repeated. A seeded fraction
of the train split is held out; the head with the best accuracy there is the one whose test
accuracy is reported, so the test split never influences a choice.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def holdout_split(num_samples: int, val_fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(num_samples)`` into (fit indices, val indices), both (n,) int64.

    The val part holds ``round(val_fraction * num_samples)`` indices, at least 1, and at least
    one index is left to fit on.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_val = max(1, round(val_fraction * num_samples))
    if num_samples - num_val < 1:
        raise ValueError(f"cannot hold out {val_fraction:.0%} of {num_samples} samples and keep some to train on")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[num_val:], order[:num_val]


def cosine_factor(step: int, total_steps: int) -> float:
    """Learning-rate multiplier decaying from 1 at step 0 towards 0 at ``total_steps``."""
    return 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


def train_head_grid(
    heads: nn.ModuleList,
    lrs: Sequence[float],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    fit_index: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    weight_decay: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    progress: str | None = None,
) -> None:
    """Train ``heads[i]`` with learning rate ``lrs[i]``, all on the same mini-batches.

    inputs: (N, ...) rows any head takes (cast to float32 on ``device`` per batch, so float16
    tokens kept on CPU are fine); targets: (N,) int64 for the default cross-entropy, or what
    ``loss_fn(logits, targets[rows])`` takes (e.g. (N, C) floats for BCE); fit_index: (n,) rows
    to train on. AdamW, cosine decay of every learning rate to 0 over ``epochs``; batch order seeded.
    ``progress``: a label to show a progress bar under (None: no bar).
    """
    optimizer = torch.optim.AdamW(
        [{"params": head.parameters(), "lr": lr} for head, lr in zip(heads, lrs)], weight_decay=weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(fit_index.numel() / batch_size)
    total_steps = epochs * steps_per_epoch
    heads.train()
    step = 0
    bar = tqdm(total=total_steps, desc=progress, unit="step", leave=False, disable=progress is None)
    for _ in range(epochs):
        order = fit_index[torch.randperm(fit_index.numel(), generator=generator)]
        for rows in order.split(batch_size):
            rows = rows.to(inputs.device)
            batch = inputs[rows].to(device, torch.float32, non_blocking=True)
            labels = targets[rows.to(targets.device)].to(device, non_blocking=True)
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr * cosine_factor(step, total_steps)
            # Heads share no parameters, so the summed loss gives each head its own gradient.
            loss = sum(loss_fn(head(batch), labels) for head in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            step += 1
            bar.update()
    bar.close()
    heads.eval()


@torch.no_grad()
def head_accuracies(
    heads: nn.ModuleList, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, chunk_size: int
) -> List[float]:
    """Top-1 accuracy in percent of every head on (inputs (M, ...), targets (M,)), chunked."""
    correct = torch.zeros(len(heads), dtype=torch.int64, device=device)
    for start in range(0, inputs.shape[0], chunk_size):
        batch = inputs[start : start + chunk_size].to(device, torch.float32, non_blocking=True)
        labels = targets[start : start + chunk_size].to(device, non_blocking=True)
        for i, head in enumerate(heads):
            correct[i] += (head(batch).argmax(dim=1) == labels).sum()
    return (100.0 * correct.double() / max(1, inputs.shape[0])).tolist()


def select_by_validation(
    heads: nn.ModuleList,
    lrs: Sequence[float],
    val_inputs: torch.Tensor,
    val_targets: torch.Tensor,
    test_inputs: torch.Tensor,
    test_targets: torch.Tensor,
    device: torch.device,
    chunk_size: int,
) -> Dict[str, object]:
    """{"test_acc", "val_acc", "best_lr", "val_acc_by_lr"} of the head best on the val split
    (ties go to the earlier learning rate)."""
    val_accs = head_accuracies(heads, val_inputs, val_targets, device, chunk_size)
    best = max(range(len(lrs)), key=lambda i: (val_accs[i], -i))
    test_acc = head_accuracies(nn.ModuleList([heads[best]]), test_inputs, test_targets, device, chunk_size)[0]
    return {
        "test_acc": test_acc,
        "val_acc": val_accs[best],
        "best_lr": float(lrs[best]),
        "val_acc_by_lr": {f"{lr:g}": acc for lr, acc in zip(lrs, val_accs)},
    }


def seeded_heads(make_head: Callable[[], nn.Module], count: int, seed: int, device: torch.device) -> nn.ModuleList:
    """``count`` heads from ``make_head``, each with the same seeded initialisation (the grid then
    differs only in its learning rate), without touching the global RNG."""
    heads = nn.ModuleList()
    for _ in range(count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            heads.append(make_head())
    return heads.to(device)


def fit_and_select_tokens(
    heads: nn.ModuleList,
    lrs: Sequence[float],
    train_tokens: torch.Tensor,
    train_y: torch.Tensor,
    test_tokens: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int,
    batch_size: int,
    val_fraction: float,
    seed: int,
    device: torch.device,
    weight_decay: float,
    progress: Optional[str],
) -> Dict[str, object]:
    """The token probes' protocol (MAP, decoder): hold out ``val_fraction`` of the train split,
    train the grid in one pass over the rest, report the head best on the held-out part."""
    fit_index, val_index = holdout_split(train_tokens.shape[0], val_fraction, seed)
    train_head_grid(heads, lrs, train_tokens, train_y, fit_index, epochs, batch_size, seed, device, weight_decay,
                    progress=progress)
    val_index = val_index.to(train_tokens.device)
    return select_by_validation(heads, lrs, train_tokens[val_index], train_y[val_index.to(train_y.device)],
                                test_tokens, test_y, device, chunk_size=batch_size * 4)


def check_probe_inputs(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, lrs: Sequence[float]
) -> None:
    """ValueError unless rows and labels pair up, train and test rows agree in shape and lrs is not empty."""
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError(
            f"probe: {train_x.shape[0]} train rows with {train_y.shape[0]} labels, "
            f"{test_x.shape[0]} test rows with {test_y.shape[0]} labels"
        )
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"probe: train rows {tuple(train_x.shape[1:])} and test rows {tuple(test_x.shape[1:])} differ")
    if test_x.shape[0] == 0:
        raise ValueError("probe: no test rows")
    if not lrs:
        raise ValueError("probe: give at least one learning rate")


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
) -> Dict[str, object]:
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

    Returns:
        {"test_acc": %, "val_acc": %, "best_lr": float, "val_acc_by_lr": {"0.001": %, ...}}.

    Example:
        >>> x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0)); y = (x[:, 0] > 0).long()
        >>> linear_probe(x[:300], y[:300], x[300:], y[300:], 2, epochs=20, batch_size=32)["test_acc"] > 90
        True
    """
    check_probe_inputs(train_x, train_y, test_x, test_y, lrs)
    device = torch.device(device)
    train_x = train_x.to(device, torch.float32).flatten(1)
    test_x = test_x.to(device, torch.float32).flatten(1)
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False).clamp_min(1e-6)  # constant features become 0
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std
    train_y = train_y.to(device, torch.int64)
    test_y = test_y.to(device, torch.int64)

    fit_index, val_index = holdout_split(train_x.shape[0], val_fraction, seed)
    heads = nn.ModuleList(nn.Linear(train_x.shape[1], num_classes) for _ in lrs).to(device)
    for head in heads:  # zero start: the problem is convex, and no random init to seed
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    train_head_grid(heads, lrs, train_x, train_y, fit_index, epochs, batch_size, seed, device, weight_decay,
                    progress="linear probe" if progress else None)
    val_index = val_index.to(device)
    return select_by_validation(
        heads, lrs, train_x[val_index], train_y[val_index], test_x, test_y, device, chunk_size=max(batch_size, 4096)
    )
