"""annoboot.eval.multilabel: average precision, multi-label kNN, and the decoder probe on the multi-label task."""

from __future__ import annotations

import pytest
import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)

from annoboot.eval.decoder_probe import decoder_probe
from annoboot.eval.multilabel import MULTI_LABEL, average_precision, knn_multilabel_scores, mean_average_precision, sample_f1


def test_average_precision_matches_scikit_learn_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (200, 4), generator=generator).float()  # many ties
    targets = (torch.rand(200, 4, generator=generator) < 0.3).float()
    ours = average_precision(scores, targets)
    for c in range(4):
        assert ours[c].item() == pytest.approx(sklearn_metrics.average_precision_score(targets[:, c], scores[:, c]))
    assert mean_average_precision(targets, targets) == pytest.approx(100.0)
    assert sample_f1(targets, targets) == pytest.approx(100.0)


def test_knn_multilabel_scores_follow_the_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    scores = knn_multilabel_scores(train, targets, torch.tensor([[0.0, 2.0]]), k=1)
    assert scores.tolist() == [[0.0, 1.0]]


def tokens_with_class_tokens(num: int, seed: int, num_tokens: int = 16, dim: int = 32, num_classes: int = 4):
    """Noise tokens (N, T, D) and multi-hot targets (N, C): each class is present with
    probability 1/2 and then adds its pattern to a token of its own, at a random position."""
    generator = torch.Generator().manual_seed(seed)
    patterns = 2 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123))
    targets = (torch.rand(num, num_classes, generator=generator) < 0.5).float()
    tokens = torch.randn(num, num_tokens, dim, generator=generator)
    positions = torch.rand(num, num_tokens, generator=generator).argsort(dim=1)[:, :num_classes]
    for c in range(num_classes):
        rows = targets[:, c].bool()
        tokens[rows, positions[rows, c]] += patterns[c]
    return tokens.half(), targets


def test_multilabel_decoder_probe_finds_each_present_class():
    train_tokens, train_t = tokens_with_class_tokens(800, seed=0)
    test_tokens, test_t = tokens_with_class_tokens(300, seed=1)
    result = decoder_probe(train_tokens, train_t, test_tokens, test_t, 4, lrs=(3e-3,), epochs=6, batch_size=64, task=MULTI_LABEL)
    assert result["test_map"] > 90  # random scores give about the prevalence, 50
    assert 0 <= result["test_f1"] <= 100
