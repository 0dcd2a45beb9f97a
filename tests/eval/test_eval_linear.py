"""annoboot.eval.linear: the linear probe."""

from __future__ import annotations

import torch
from helpers import (
    needs_fmnist,
    one_thread,  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)
)

from annoboot.config import SourceConfig
from annoboot.data import build_source
from annoboot.eval.linear import linear_probe


def separable_data(num: int, dim: int = 16, num_classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    return centres[labels] + torch.randn(num, dim, generator=generator), labels


def test_linear_probe_separates_separable_classes_and_is_deterministic():
    train_x, train_y = separable_data(1000, seed=0)
    test_x, test_y = separable_data(300, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=10, batch_size=128)
    assert result["test_acc"] > 95
    assert result["best_lr"] in (1e-3, 3e-3, 1e-2)
    assert set(result["val_acc_by_lr"]) == {"0.001", "0.003", "0.01"}
    again = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=10, batch_size=128)
    assert again == result


@needs_fmnist
def test_linear_probe_on_fashion_mnist_pixels_beats_70_percent():
    train = build_source(SourceConfig(kind="fashion_mnist", split="train", limit=5000))
    test = build_source(SourceConfig(kind="fashion_mnist", split="test", limit=1000))
    pixels = lambda source: source.in_memory().flatten(1).float() / 255  # noqa: E731
    result = linear_probe(
        pixels(train), train.labels, pixels(test), test.labels, num_classes=10, epochs=10, batch_size=256
    )
    assert result["test_acc"] > 70
