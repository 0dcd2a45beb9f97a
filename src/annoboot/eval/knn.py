"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Features are L2-normalised, so similarity is cosine similarity. Each of a test point's ``k``
nearest train points votes for its own label with weight ``exp(sim / T)``; the class with the
largest total wins. A small temperature lets the nearest neighbours dominate. Test rows are
processed in chunks, so memory is ``chunk_size * N`` similarities rather than ``M * N``.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from annoboot.eval.registry import register_probe, require_positive


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predict a class for every test row by a similarity-weighted vote of its k nearest train rows.

    Runs on the device the tensors are on (all three must share it).

    Args:
        train_features: (N, D) float, any scale (normalised here).
        train_labels: (N,) int64 in [0, num_classes).
        test_features: (M, D) float.
        num_classes: C.
        k: neighbours per test row; capped at N.
        temperature: T in the vote weight exp(cos_sim / T).
        chunk_size: test rows per similarity matrix.

    Returns:
        (M,) int64 predicted classes.

    Example:
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_predict(train, torch.tensor([0, 0, 1]), torch.tensor([[0.1, 1.0]]), 2, k=1)
        tensor([1])
    """
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"knn_predict: need (N, D) train and (M, D) test features, got {tuple(train_features.shape)} "
            f"and {tuple(test_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"knn_predict: {train_features.shape[0]} train rows but labels of shape {tuple(train_labels.shape)}"
        )
    if train_features.shape[0] == 0:
        raise ValueError("knn_predict: no train features")
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"knn_predict: k, temperature and chunk_size must be positive, got {k}, {temperature}, {chunk_size}"
        )
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.long()
    predictions = []
    for chunk in test_features.split(chunk_size):
        similarity = F.normalize(chunk.float(), dim=1) @ train.T  # (c, N)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (c, k)
        # Shifting by the row maximum leaves the argmax unchanged and keeps exp() finite for small T.
        weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels[top_index], weights)
        predictions.append(votes.argmax(dim=1))
    if not predictions:
        return torch.empty(0, dtype=torch.int64, device=test_features.device)
    return torch.cat(predictions)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy in percent of :func:`knn_predict` against ``test_labels`` (M,)."""
    predictions = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    if predictions.numel() == 0:
        raise ValueError("knn_accuracy: no test features")
    return 100.0 * (predictions == test_labels.to(predictions.device)).float().mean().item()


def _check_knn_options(cfg: Any) -> None:
    require_positive(cfg, "knn_k", "knn_temperature")


@register_probe("knn", check=_check_knn_options)
def knn_probe(train, test, train_targets, test_targets, num_outputs: int, cfg: Any, common: Dict) -> Tuple[Dict, Dict]:
    """The registered probe "knn": the task's kNN vote on pooled features (eval.knn_k, eval.knn_temperature)."""
    outcome = common["task"].knn(train.pooled, train_targets, test.pooled, test_targets, num_outputs, cfg.knn_k,
                                 cfg.knn_temperature, common["device"])
    return outcome, {"k": min(cfg.knn_k, len(train)), "temperature": cfg.knn_temperature}

