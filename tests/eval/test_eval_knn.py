"""annoboot.eval.knn: the weighted kNN classifier."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)

from annoboot.eval.knn import knn_accuracy, knn_predict


def test_knn_assigns_points_to_the_label_of_their_cluster():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, -0.1], [0.0, 1.0], [0.1, 0.9], [-0.1, 0.95]])
    train_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    test = torch.tensor([[2.0, 0.1], [0.2, 3.0], [0.8, -0.2]])  # scale does not matter: cosine
    assert knn_predict(train, train_labels, test, num_classes=2, k=3).tolist() == [0, 1, 0]
    accuracy = knn_accuracy(train, train_labels, test, torch.tensor([0, 1, 1]), num_classes=2, k=3)
    assert accuracy == pytest.approx(200 / 3)


def test_knn_weighting_lets_the_nearer_class_win_a_tied_vote():
    # One neighbour of each class: counts tie 1-1. The class-1 point is nearer; an unweighted
    # vote (or argmax's tie-break) would pick class 0.
    train = torch.tensor([[math.cos(0.1), math.sin(0.1)], [math.cos(0.6), math.sin(0.6)]])
    train_labels = torch.tensor([1, 0])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, train_labels, test, num_classes=2, k=2, temperature=0.07).tolist() == [1]


def test_knn_with_k_above_the_train_size_uses_every_train_point():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.05]])
    # With all three neighbours and a large temperature the vote is nearly a count: 2 x class 1.
    assert knn_predict(train, labels, test, num_classes=2, k=50, temperature=100.0).tolist() == [1]


def test_knn_chunking_does_not_change_predictions():
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 8, generator=generator), torch.randn(37, 8, generator=generator)
    labels = torch.randint(0, 5, (200,), generator=generator)
    whole = knn_predict(train, labels, test, 5, chunk_size=1024)
    assert torch.equal(whole, knn_predict(train, labels, test, 5, chunk_size=4))
