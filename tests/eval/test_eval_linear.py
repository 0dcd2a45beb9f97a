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


def _two_clusters(num: int, seed: int):
    """Class 0 at x0 = -3, class 1 at x0 = +3 (noise 0.1): linearly separable by hand."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num) % 2
    features = 0.1 * torch.randn(num, 4, generator=generator)
    features[:, 0] += 6.0 * labels - 3.0
    return features, labels


def test_linearly_separable_features_score_100():
    """Known answer: two clusters 6 apart with noise 0.1 are classified without a mistake."""
    train_x, train_y = _two_clusters(200, seed=0)
    test_x, test_y = _two_clusters(50, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=2, lrs=(0.1,), epochs=10, batch_size=32)
    assert result["test_acc"] == 100.0 and result["val_acc"] == 100.0


def test_the_learning_rate_is_chosen_on_the_validation_split_even_when_test_favours_another():
    """lr 0 leaves the head at zero (every row class 0); lr 0.1 learns the clusters (val 100).
    The test split is all class 0 but sits on class 1's cluster: there the zero head scores 100
    and the learned one 0. The probe must pick lr 0.1 on val and report its test score, 0.
    Caught break: the learning rate selected on the test split."""
    train_x, train_y = _two_clusters(200, seed=0)
    test_x = _two_clusters(20, seed=1)[0][1::2]  # class 1's cluster ...
    test_y = torch.zeros(10, dtype=torch.long)  # ... labelled class 0
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=2, lrs=(0.0, 0.1), epochs=5, batch_size=32,
                          val_fraction=0.25)
    assert result["best_lr"] == 0.1 and result["val_acc"] == 100.0
    assert result["val_acc_by_lr"]["0"] < 100.0  # the zero head is worse on val ...
    assert result["test_acc"] == 0.0  # ... and the score reported is the val-chosen head's
