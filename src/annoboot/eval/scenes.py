"""Probes of a frozen encoder on Fashion-MNIST scenes (``annoboot.data.scenes``).

Three questions, each answered with kNN, a linear probe and a MAP probe (and the decoder probe
when ``cfg.probes`` names it):

(a) single items: the ordinary probes (:func:`annoboot.eval.evaluate`) on Fashion-MNIST items;
(b) the item inside a given box: :func:`box_probe` crops every item box of the train and test
    scenes (``annoboot.views.render_views``, the renderer training uses), and runs the same
    probes on the crops with the items' classes as labels (top-1 %);
(c) which classes a scene holds: :func:`multilabel_probe` encodes whole scenes and trains
    one-vs-rest heads with binary cross-entropy; reported as **macro mAP** (mean over classes of
    the average precision, in %), with the per-scene F1 at threshold 0.5 alongside.

Probe scenes of split train hold only Fashion-MNIST train items and test scenes only test items.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from annoboot.batch import ImageBatch
from annoboot.config import EvalConfig
from annoboot.data.base import ImageSource, InMemoryImageSource
from annoboot.data.scenes import SceneSource
from annoboot.errors import AnnobootError
from annoboot.eval import PROBES, TOKEN_PROBES, evaluate
from annoboot.eval.decoder_probe import DecoderHead, check_decoder_options, decoder_width
from annoboot.eval.features import extract_features
from annoboot.eval.linear import holdout_split, seeded_heads, train_head_grid
from annoboot.eval.map_probe import MAPHead
from annoboot.models.encoder import Encoder
from annoboot.views import Normalize, render_views


class BoxCropSource(InMemoryImageSource):
    """Every item box of some scenes, cropped and resized, labelled with the item's class.

    images (via :meth:`in_memory`): (M, C, side, side) uint8, C the scenes' channels, items in
    the scenes' order; labels: (M,) int64. ``max_items`` keeps the first M items.
    """

    def __init__(self, scenes: SceneSource, side: int, max_items: Optional[int] = None, batch_size: int = 2048,
                 device: torch.device | str = "cpu"):
        flat = scenes.scenes
        count = flat.item_labels.numel() if max_items is None else min(max_items, flat.item_labels.numel())
        if count == 0:
            raise AnnobootError(f"{scenes.name} holds no items to crop")
        images = scenes.in_memory()
        height, width = images.shape[-2:]
        crops = torch.empty((count, images.shape[1], side, side), dtype=torch.uint8)
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            scene_of = flat.item_scene[start:stop]
            sizes = torch.tensor([[height, width]], device=device).repeat(stop - start, 1)
            batch = ImageBatch(images[scene_of].to(device), sizes)
            views = render_views(batch, flat.item_boxes[start:stop, None].to(device), side)  # (b, 3, S, S) in [0, 1]
            crops[start:stop] = views[:, : images.shape[1]].mul(255).round_().to(torch.uint8).cpu()
        self._images = crops
        self.labels = flat.item_labels[:count].clone()
        self.class_names = scenes.class_names
        self.name = f"{scenes.name}/boxes"



def box_probe(
    encoder: Encoder,
    train_scenes: SceneSource,
    test_scenes: SceneSource,
    cfg: EvalConfig,
    img_size: int,
    normalize: Normalize,
    device: torch.device | str,
    max_train_items: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Probe (b): classify the item inside a given box of a scene from the features of its crop.

    Boxes are cropped at ``img_size`` (the encoder's input side) and the probes of ``cfg.probes``
    run as in :func:`annoboot.eval.evaluate` (same keys: "knn", "linear", "map" top-1 %, details,
    counts); the train crops come from ``train_scenes`` (at most ``max_train_items``).
    """
    train = BoxCropSource(train_scenes, img_size, max_train_items, device=device)
    test = BoxCropSource(test_scenes, img_size, device=device)
    return evaluate(encoder, train, test, cfg, img_size, normalize, device, progress)


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


# ------------------------------------------------------------------- multi-label probes


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
def _head_probabilities(head: nn.Module, inputs: torch.Tensor, device: torch.device, chunk_size: int) -> torch.Tensor:
    parts = [head(inputs[i : i + chunk_size].to(device, torch.float32)) for i in range(0, inputs.shape[0], chunk_size)]
    return torch.cat([torch.sigmoid(logits).cpu() for logits in parts])


def _fit_multilabel_grid(
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
) -> Dict[str, Any]:
    """Train every head on the fit split with BCE, pick the best val mAP, report it on test."""
    if not lrs:
        raise ValueError("multi-label probe: give at least one learning rate")
    fit_index, val_index = holdout_split(train_x.shape[0], val_fraction, seed)
    train_head_grid(heads, lrs, train_x, train_t, fit_index, epochs, batch_size, seed, device, weight_decay,
                    loss_fn=F.binary_cross_entropy_with_logits)
    chunk = max(batch_size, 1024)
    val_x, val_t = train_x[val_index.to(train_x.device)], train_t[val_index.to(train_t.device)].cpu()
    val_maps = [mean_average_precision(_head_probabilities(head, val_x, device, chunk), val_t) for head in heads]
    best = max(range(len(lrs)), key=lambda i: (-math.inf if math.isnan(val_maps[i]) else val_maps[i], -i))
    probabilities = _head_probabilities(heads[best], test_x, device, chunk)
    test_t = test_t.cpu()
    return {
        "test_map": mean_average_precision(probabilities, test_t),
        "test_f1": sample_f1(probabilities, test_t),
        "val_map": val_maps[best],
        "best_lr": float(lrs[best]),
        "val_map_by_lr": {f"{lr:g}": value for lr, value in zip(lrs, val_maps)},
    }


def multilabel_linear_probe(
    train_x: torch.Tensor,
    train_t: torch.Tensor,
    test_x: torch.Tensor,
    test_t: torch.Tensor,
    lrs: Sequence[float] = (1e-3, 3e-3, 1e-2),
    epochs: int = 30,
    batch_size: int = 1024,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    weight_decay: float = 0.0,
) -> Dict[str, Any]:
    """One-vs-rest linear heads (BCE) on standardised pooled features (N, D), targets (N, C) in
    {0, 1}; a grid over ``lrs`` trained in one pass, the best on a seeded val split reported.

    Returns {"test_map": macro mAP %, "test_f1": per-scene F1 %, "val_map", "best_lr", "val_map_by_lr"}.
    """
    device = torch.device(device)
    train_x, test_x = train_x.to(device, torch.float32), test_x.to(device, torch.float32)
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    heads = nn.ModuleList(nn.Linear(train_x.shape[1], train_t.shape[1]) for _ in lrs).to(device)
    for head in heads:  # zero start, as the single-label linear probe
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return _fit_multilabel_grid(heads, lrs, train_x, train_t.to(device), test_x, test_t, epochs, batch_size,
                                val_fraction, seed, device, weight_decay)


def multilabel_map_probe(
    train_tokens: torch.Tensor,
    train_t: torch.Tensor,
    test_tokens: torch.Tensor,
    test_t: torch.Tensor,
    lrs: Sequence[float] = (3e-4, 1e-3),
    epochs: int = 10,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    weight_decay: float = 0.0,
) -> Dict[str, Any]:
    """One :class:`MAPHead` per learning rate over tokens (N, T, D) with C sigmoid outputs (BCE);
    tokens stay where they are and move per batch. Returns the keys of :func:`multilabel_linear_probe`."""
    if train_tokens.ndim != 3:
        raise ValueError(f"multilabel_map_probe: tokens must be (N, T, D), got {tuple(train_tokens.shape)}")
    device = torch.device(device)
    heads = seeded_heads(lambda: MAPHead(train_tokens.shape[2], train_t.shape[1]), len(lrs), seed, device)
    return _fit_multilabel_grid(heads, lrs, train_tokens, train_t, test_tokens, test_t, epochs, batch_size,
                                val_fraction, seed, device, weight_decay)


def multilabel_decoder_probe(
    train_tokens: torch.Tensor,
    train_t: torch.Tensor,
    test_tokens: torch.Tensor,
    test_t: torch.Tensor,
    lrs: Sequence[float] = (3e-4, 1e-3),
    epochs: int = 5,
    depth: int = 2,
    num_queries: int = 1,
    dim: Optional[int] = 128,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    weight_decay: float = 0.0,
) -> Dict[str, Any]:
    """One :class:`DecoderHead` per learning rate over tokens (N, T, D) with C sigmoid outputs
    (BCE), sized as :func:`annoboot.eval.decoder_probe.decoder_probe`; tokens stay where they are
    and move per batch. Returns the keys of :func:`multilabel_linear_probe`."""
    if train_tokens.ndim != 3:
        raise ValueError(f"multilabel_decoder_probe: tokens must be (N, T, D), got {tuple(train_tokens.shape)}")
    device = torch.device(device)
    token_dim = train_tokens.shape[2]
    width = decoder_width(dim, token_dim)
    heads = seeded_heads(lambda: DecoderHead(token_dim, train_t.shape[1], width, depth, num_queries), len(lrs), seed, device)
    return _fit_multilabel_grid(heads, lrs, train_tokens, train_t, test_tokens, test_t, epochs, batch_size,
                                val_fraction, seed, device, weight_decay)


def multilabel_probe(
    encoder: Encoder,
    train_scenes: SceneSource,
    test_scenes: SceneSource,
    cfg: EvalConfig,
    img_size: int,
    normalize: Normalize,
    device: torch.device | str,
    progress: bool = False,
) -> Dict[str, Any]:
    """Probe (c): which Fashion-MNIST classes a whole scene holds, from its features.

    Scenes are resized whole to ``img_size``. kNN (weighted neighbour vote per class), linear
    (pooled features), MAP and decoder (tokens) as ``cfg.probes`` asks, with the learning-rate
    grids and epochs of ``cfg`` (linear_*, map_*, decoder_probe_*).

    Returns {"knn"/"linear"/"map"/"decoder": macro mAP %, "f1": {probe: per-scene F1 % at 0.5},
    "details": {probe: settings and val results}, "metric": "mAP", "num_train", "num_test",
    "seconds"}.
    """
    start = time.perf_counter()
    unknown = [name for name in cfg.probes if name not in PROBES]
    if unknown:
        raise AnnobootError(f"eval.probes holds unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
    check_decoder_options(cfg)
    device = torch.device(device)
    keep_tokens = any(name in cfg.probes for name in TOKEN_PROBES)
    train, test = (
        extract_features(encoder, scenes, img_size, normalize, cfg.batch_size, device, keep_tokens, 0, progress)
        for scenes in (train_scenes, test_scenes)
    )
    train_t, test_t = train_scenes.multi_hot(), test_scenes.multi_hot()

    results: Dict[str, Any] = {"metric": "mAP", "f1": {}}
    details: Dict[str, Any] = {}
    if "knn" in cfg.probes:
        scores = knn_multilabel_scores(
            train.pooled.to(device), train_t, test.pooled.to(device), cfg.knn_k, cfg.knn_temperature
        )
        results["knn"] = mean_average_precision(scores, test_t)
        results["f1"]["knn"] = sample_f1(scores, test_t)
        details["knn"] = {"k": min(cfg.knn_k, len(train)), "temperature": cfg.knn_temperature}
    if "linear" in cfg.probes:
        linear = multilabel_linear_probe(
            train.pooled, train_t, test.pooled, test_t, tuple(cfg.linear_lrs), cfg.linear_epochs,
            val_fraction=cfg.val_fraction, seed=cfg.seed, device=device,
        )
        results["linear"], results["f1"]["linear"] = linear["test_map"], linear["test_f1"]
        details["linear"] = {"epochs": cfg.linear_epochs, **linear}
    if "map" in cfg.probes:
        assert train.tokens is not None and test.tokens is not None
        attention = multilabel_map_probe(
            train.tokens, train_t, test.tokens, test_t, tuple(cfg.map_lrs), cfg.map_epochs,
            val_fraction=cfg.val_fraction, seed=cfg.seed, device=device,
        )
        results["map"], results["f1"]["map"] = attention["test_map"], attention["test_f1"]
        details["map"] = {"epochs": cfg.map_epochs, "num_tokens": train.tokens.shape[1], **attention}
    if "decoder" in cfg.probes:
        assert train.tokens is not None and test.tokens is not None
        decoder = multilabel_decoder_probe(
            train.tokens, train_t, test.tokens, test_t, tuple(cfg.decoder_probe_lrs), cfg.decoder_probe_epochs,
            cfg.decoder_probe_depth, cfg.decoder_probe_queries, cfg.decoder_probe_dim,
            val_fraction=cfg.val_fraction, seed=cfg.seed, device=device,
        )
        results["decoder"], results["f1"]["decoder"] = decoder["test_map"], decoder["test_f1"]
        details["decoder"] = {"epochs": cfg.decoder_probe_epochs, "num_tokens": train.tokens.shape[1],
                              "depth": cfg.decoder_probe_depth, "queries": cfg.decoder_probe_queries,
                              "dim": decoder_width(cfg.decoder_probe_dim, train.tokens.shape[2]), **decoder}
    results["details"] = details
    results["num_train"], results["num_test"] = len(train), len(test)
    results["seconds"] = time.perf_counter() - start
    return results


def scene_probes(
    encoder: Encoder,
    item_train: ImageSource,
    item_test: ImageSource,
    scene_train: SceneSource,
    scene_test: SceneSource,
    cfg: EvalConfig,
    img_size: int,
    normalize: Normalize,
    device: torch.device | str,
    max_box_train_items: Optional[int] = None,
    which: Sequence[str] = ("items", "boxes", "multilabel"),
) -> Dict[str, Dict[str, Any]]:
    """Probes (a) "items", (b) "boxes" and (c) "multilabel" (those in ``which``) of one encoder."""
    results: Dict[str, Dict[str, Any]] = {}
    if "items" in which:
        results["items"] = evaluate(encoder, item_train, item_test, cfg, img_size, normalize, device)
    if "boxes" in which:
        results["boxes"] = box_probe(
            encoder, scene_train, scene_test, cfg, img_size, normalize, device, max_box_train_items
        )
    if "multilabel" in which:
        results["multilabel"] = multilabel_probe(encoder, scene_train, scene_test, cfg, img_size, normalize, device)
    return results


def format_scene_results(results: Dict[str, Dict[str, Any]]) -> List[str]:
    """One line per probe family: '(a) items top-1 %  kNN 71.2  linear 72.0  MAP 79.1' ... (and
    'decoder 80.3' when it ran)."""
    names = {"items": "(a) items top-1 %", "boxes": "(b) boxes top-1 %", "multilabel": "(c) scenes mAP %"}
    lines = []
    for family, result in results.items():
        cells = "  ".join(
            f"{label} {result[key]:.2f}"
            for key, label in (("knn", "kNN"), ("linear", "linear"), ("map", "MAP"), ("decoder", "decoder"))
            if key in result
        )
        lines.append(f"{names.get(family, family):<20} {cells}")
    return lines


__all__ = [
    "BoxCropSource",
    "average_precision",
    "box_probe",
    "format_scene_results",
    "knn_multilabel_scores",
    "mean_average_precision",
    "multilabel_decoder_probe",
    "multilabel_linear_probe",
    "multilabel_map_probe",
    "multilabel_probe",
    "sample_f1",
    "scene_probes",
]
