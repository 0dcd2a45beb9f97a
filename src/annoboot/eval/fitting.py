"""Training and choosing probe heads on frozen features: the one protocol every probe follows.

A probe (linear, MAP, decoder) is a grid of heads, one per learning rate, trained in the same
pass over the mini-batches (as in dinov2's linear evaluation: the features are read once per
step and only the heads' work is repeated). A seeded fraction of the train split is held out;
the head that scores best there is the one reported on the test split, so the test split never
influences a choice. What the heads predict and how they are scored is the probe's *task*:
:data:`SINGLE_LABEL` (cross-entropy, top-1 %) or ``annoboot.eval.multilabel.MULTI_LABEL``
(binary cross-entropy per class, macro mAP %); :func:`fit_and_select` runs either.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from annoboot.eval.knn import knn_accuracy


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


def seeded_heads(make_head: Callable[[], nn.Module], count: int, seed: int, device: torch.device) -> nn.ModuleList:
    """``count`` heads from ``make_head``, each with the same seeded initialisation (the grid then
    differs only in its learning rate), without touching the global RNG."""
    heads = nn.ModuleList()
    for _ in range(count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            heads.append(make_head())
    return heads.to(device)


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


class SingleLabel:
    """One class per example: targets (N,) int64, cross-entropy heads, scored by top-1 %."""

    metric = "acc"
    loss_fn = staticmethod(F.cross_entropy)

    @staticmethod
    def chunk_size(batch_size: int, tokens: bool) -> int:
        """Rows per evaluation chunk (memory only)."""
        return batch_size * 4 if tokens else max(batch_size, 4096)

    @staticmethod
    def targets(values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Class ids as cross-entropy takes them, on ``device``."""
        return values.to(device, torch.int64)

    @staticmethod
    def head_scores(heads: nn.ModuleList, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
                    chunk_size: int) -> List[float]:
        return head_accuracies(heads, inputs, targets, device, chunk_size)

    @staticmethod
    def test_report(head: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
                    chunk_size: int) -> Dict[str, float]:
        return {"test_acc": head_accuracies(nn.ModuleList([head]), inputs, targets, device, chunk_size)[0]}

    @staticmethod
    def knn(train_x: torch.Tensor, train_t: torch.Tensor, test_x: torch.Tensor, test_t: torch.Tensor, num_outputs: int,
            k: int, temperature: float, device: torch.device) -> Dict[str, float]:
        accuracy = knn_accuracy(train_x.to(device), train_t.to(device), test_x.to(device), test_t.to(device), num_outputs,
                                k=k, temperature=temperature)
        return {"test_acc": accuracy}


SINGLE_LABEL = SingleLabel()


def fit_and_select(
    heads: nn.ModuleList,
    lrs: Sequence[float],
    train_x: torch.Tensor,
    train_t: torch.Tensor,
    test_x: torch.Tensor,
    test_t: torch.Tensor,
    epochs: int,
    batch_size: int,
    val_fraction: float,
    seed: int,
    device: torch.device,
    weight_decay: float,
    task: Any = SINGLE_LABEL,
    chunk_size: Optional[int] = None,
    progress: Optional[str] = None,
) -> Dict[str, Any]:
    """The probe protocol: hold out ``val_fraction`` of the train split (seeded), train the grid
    ``heads[i]`` at ``lrs[i]`` in one pass over the rest, report the head best on the held-out
    part (ties and NaN scores go to the earlier learning rate) on the test split.

    Returns {"test_<m>": %, ... (the task's test report), "val_<m>": %, "best_lr": float,
    "val_<m>_by_lr": {"0.001": %, ...}} with ``m`` the task's metric ("acc", "map").
    """
    fit_index, val_index = holdout_split(train_x.shape[0], val_fraction, seed)
    train_head_grid(heads, lrs, train_x, train_t, fit_index, epochs, batch_size, seed, device, weight_decay,
                    loss_fn=task.loss_fn, progress=progress)
    chunk_size = chunk_size or batch_size
    val_x, val_t = train_x[val_index.to(train_x.device)], train_t[val_index.to(train_t.device)]
    val_scores = task.head_scores(heads, val_x, val_t, device, chunk_size)
    best = max(range(len(lrs)), key=lambda i: (-math.inf if math.isnan(val_scores[i]) else val_scores[i], -i))
    metric = task.metric
    return {
        **task.test_report(heads[best], test_x, test_t, device, chunk_size),
        f"val_{metric}": val_scores[best],
        "best_lr": float(lrs[best]),
        f"val_{metric}_by_lr": {f"{lr:g}": score for lr, score in zip(lrs, val_scores)},
    }


__all__ = [
    "SINGLE_LABEL",
    "SingleLabel",
    "check_probe_inputs",
    "cosine_factor",
    "fit_and_select",
    "head_accuracies",
    "holdout_split",
    "seeded_heads",
    "train_head_grid",
]
