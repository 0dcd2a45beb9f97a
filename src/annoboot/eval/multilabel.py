"""Multi-label probes: which of C classes an example holds (a scene's items), scored by macro mAP.

The probes are those of single-label classification (kNN, linear, MAP, decoder: pass
``task=MULTI_LABEL`` to :func:`~annoboot.eval.linear.linear_probe`,
:func:`~annoboot.eval.map_probe.map_probe` or :func:`~annoboot.eval.decoder_probe.decoder_probe`),
run by the same protocol (:func:`annoboot.eval.fitting.fit_and_select`) with this task:
one sigmoid output per class trained with binary cross-entropy, the head chosen by val mAP,
and the per-example F1 at threshold 0.5 reported beside the test mAP. kNN votes per class
(:func:`knn_multilabel_scores`).
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------ multi-label metrics


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision of each column: (M, C) scores, (M, C) {0, 1} targets -> (C,) float64.

    AP = sum over score thresholds of (recall step) x precision, tied scores taken together
    (the definition of scikit-learn's ``average_precision_score``). NaN for a class without
    positives.
    """
    aps = []
    for column in range(scores.shape[1]):
        truth = targets[:, column] > 0.5
        positives = int(truth.sum())
        if positives == 0:
            aps.append(float("nan"))
            continue
        order = torch.argsort(scores[:, column].double(), descending=True, stable=True)
        ranked, hits = scores[order, column].double(), truth[order].double()
        true_pos, false_pos = hits.cumsum(0), (1 - hits).cumsum(0)
        run_end = torch.ones_like(ranked, dtype=torch.bool)
        run_end[:-1] = ranked[1:] != ranked[:-1]  # a run of tied scores counts at its end only
        true_pos, false_pos = true_pos[run_end], false_pos[run_end]
        recall = true_pos / positives
        precision = true_pos / (true_pos + false_pos)
        recall_step = recall - torch.cat([recall.new_zeros(1), recall[:-1]])
        aps.append(float((recall_step * precision).sum()))
    return torch.tensor(aps, dtype=torch.float64)


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP in %: the mean AP over the classes that have positives."""
    aps = average_precision(scores, targets)
    return 100.0 * float(aps[~aps.isnan()].mean()) if (~aps.isnan()).any() else float("nan")


def sample_f1(probabilities: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> float:
    """Per-scene F1 of the classes predicted at ``threshold``, averaged over scenes, in %."""
    predicted = probabilities >= threshold
    truth = targets > 0.5
    true_pos = (predicted & truth).sum(1).double()
    denominator = (predicted.sum(1) + truth.sum(1)).double()
    f1 = torch.where(denominator > 0, 2 * true_pos / denominator.clamp_min(1), torch.ones_like(denominator))
    return 100.0 * float(f1.mean())


def knn_multilabel_scores(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(M, C) scores in [0, 1]: the exp(cos / T)-weighted share of a test row's k nearest train
    rows holding each class (the weighted kNN of :mod:`annoboot.eval.knn`, one vote per class)."""
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    train_targets = train_targets.float().to(train.device)
    parts = []
    for chunk in test_features.split(chunk_size):
        similarity = F.normalize(chunk.float().to(train.device), dim=1) @ train.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()  # shifted: finite for small T
        weights = weights / weights.sum(1, keepdim=True)
        parts.append(torch.einsum("mk,mkc->mc", weights, train_targets[top_index]).cpu())
    return torch.cat(parts)


@torch.no_grad()
def head_probabilities(head: nn.Module, inputs: torch.Tensor, device: torch.device, chunk_size: int) -> torch.Tensor:
    parts = [head(inputs[i : i + chunk_size].to(device, torch.float32)) for i in range(0, inputs.shape[0], chunk_size)]
    return torch.cat([torch.sigmoid(logits).cpu() for logits in parts])


class MultiLabel:
    """C independent yes/no outputs: targets (N, C) in {0, 1}, BCE heads, scored by macro mAP %
    (with the per-example F1 at 0.5 in the test report)."""

    metric = "map"
    loss_fn = staticmethod(F.binary_cross_entropy_with_logits)

    @staticmethod
    def chunk_size(batch_size: int, tokens: bool) -> int:
        """Rows per evaluation chunk (memory only)."""
        return max(batch_size, 1024)

    @staticmethod
    def targets(values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Multi-hot rows as BCE takes them, on ``device``."""
        return values.to(device)

    @staticmethod
    def head_scores(heads: nn.ModuleList, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
                    chunk_size: int) -> List[float]:
        targets = targets.cpu()
        return [mean_average_precision(head_probabilities(head, inputs, device, chunk_size), targets) for head in heads]

    @staticmethod
    def test_report(head: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
                    chunk_size: int) -> Dict[str, float]:
        probabilities, targets = head_probabilities(head, inputs, device, chunk_size), targets.cpu()
        return {"test_map": mean_average_precision(probabilities, targets), "test_f1": sample_f1(probabilities, targets)}

    @staticmethod
    def knn(train_x: torch.Tensor, train_t: torch.Tensor, test_x: torch.Tensor, test_t: torch.Tensor, num_outputs: int,
            k: int, temperature: float, device: torch.device) -> Dict[str, float]:
        scores = knn_multilabel_scores(train_x.to(device), train_t, test_x.to(device), k, temperature)
        return {"test_map": mean_average_precision(scores, test_t), "test_f1": sample_f1(scores, test_t)}


MULTI_LABEL = MultiLabel()


__all__ = [
    "MULTI_LABEL",
    "MultiLabel",
    "average_precision",
    "head_probabilities",
    "knn_multilabel_scores",
    "mean_average_precision",
    "sample_f1",
]
