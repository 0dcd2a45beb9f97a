"""Probes in context: the item in a given box, read from the features of the whole scene.

Where the paper measures on COCO (classify the object in a given box), the box is not cropped
and resized first: the scene is encoded once, at its own resolution, and the item is read from
the tokens that fall inside its box. That asks what crop consistency is worst at on scenes:
features of a part of an image that say what is there, not what the whole image is.

- :func:`any_size_encoder`: the encoder at any input size (a ViT's position embedding is
  interpolated to the scene's token grid; a CNN's feature map simply grows).
- :func:`box_token_mask` (from annoboot.actions): which tokens of an (h, w) grid lie inside a
  box: those whose centre does, or, for a box that holds no token centre, the token under the
  box's centre.
- :func:`in_context_features`: one row per item of some scenes, its box tokens mean-pooled
  (kNN, linear) and the same tokens kept as a padded set with a mask (MAP and decoder probes
  read only them, eval/token_sets.py), labelled with the item's class.
- :func:`in_context_probe`: probe (b') with the probes of ``eval.probes``; and
  :func:`scene_probe_in_context`: probe (c), which classes a scene holds, with the scene
  encoded at its own resolution.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from annoboot.actions import box_token_mask
from annoboot.batch import ImageBatch
from annoboot.data.boxed_scenes import BoxedSceneSource
from annoboot.errors import AnnobootError
from annoboot.eval.features import Features
from annoboot.eval.fitting import SINGLE_LABEL
from annoboot.eval.probes import check_probe_config, run_probes, wants_tokens
from annoboot.eval.scenes import multilabel_probe
from annoboot.models.encoder import Encoder, rebuild_backbone
from annoboot.runtime import autocast_context
from annoboot.views import Normalize, render_full_images


def any_size_encoder(encoder: nn.Module) -> nn.Module:
    """``encoder`` made to take images of any size, with the same weights.

    A timm ViT is rebuilt with ``dynamic_img_size=True`` (its position embedding is interpolated
    to each input's token grid, as timm does for any resolution); a CNN, or anything that is not
    an :class:`Encoder` (the raw-pixel floor), is returned as it is.
    """
    if not isinstance(encoder, Encoder) or not hasattr(encoder.backbone, "pos_embed"):
        return encoder
    if getattr(encoder.backbone, "dynamic_img_size", False):
        return encoder
    try:
        backbone = rebuild_backbone(encoder, dynamic_img_size=True)
    except Exception as exc:  # a timm model without dynamic_img_size
        raise AnnobootError(f"in-context probes: backbone {encoder.backbone_name} cannot take other input sizes: {exc}") from None
    return Encoder(backbone, encoder.backbone_name, encoder.create_kwargs)


def token_grid(num_tokens: int, height: int, width: int) -> Tuple[int, int]:
    """(h, w) of a token grid of ``num_tokens`` over an image of height x width (square patches)."""
    rows = round(math.sqrt(num_tokens * height / width))
    if rows < 1 or num_tokens % rows:
        raise AnnobootError(f"in-context probes: {num_tokens} tokens do not form a grid over a {height}x{width} image")
    return rows, num_tokens // rows


def pool_box_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens (M, T, D), mask (M, T) bool -> (M, D): the mean of each row's marked tokens."""
    weights = mask.to(tokens.dtype)
    return (tokens * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def in_context_features(
    encoder: nn.Module,
    scenes: BoxedSceneSource,
    normalize: Normalize,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    keep_tokens: bool = False,
    max_items: Optional[int] = None,
) -> Features:
    """One row per item of ``scenes`` (the first ``max_items``), read from its whole scene.

    Each scene is encoded once at its own resolution (``any_size_encoder``). The item's pooled
    vector is the mean of its box's tokens (:func:`box_token_mask`); with ``keep_tokens`` the
    same tokens are kept as a set padded to the largest set, with the mask in
    ``Features.token_mask`` (:func:`pad_token_sets` pads two splits to one size). Labels are
    the items' classes.
    """
    device = torch.device(device)
    encoder = any_size_encoder(encoder)
    flat = scenes.scenes
    count = flat.item_labels.numel() if max_items is None else min(max_items, flat.item_labels.numel())
    if count == 0:
        raise AnnobootError(f"{scenes.name} holds no items to probe")
    num_scenes = int(flat.item_scene[count - 1]) + 1
    images = scenes.in_memory()
    height, width = images.shape[-2:]
    pooled: List[torch.Tensor] = []
    sets: List[torch.Tensor] = []
    masks: List[torch.Tensor] = []
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for start in range(0, num_scenes, batch_size):
                stop = min(start + batch_size, num_scenes)
                batch = ImageBatch(images[start:stop].to(device), torch.tensor([[height, width]]).repeat(stop - start, 1))
                with autocast_context(device, "auto"):
                    tokens = encoder(render_full_images(batch, height, normalize.to(device))).tokens
                tokens = tokens.float()
                grid = token_grid(tokens.shape[1], height, width)
                items = torch.nonzero((flat.item_scene[:count] >= start) & (flat.item_scene[:count] < stop))[:, 0]
                mask = box_token_mask(flat.item_boxes[items].to(device), grid)
                item_tokens = tokens[(flat.item_scene[items] - start).to(device)]
                pooled.append(pool_box_tokens(item_tokens, mask).cpu())
                if keep_tokens:
                    kept, kept_mask = compact_token_sets(item_tokens, mask)
                    sets.append(kept.to(torch.float16).cpu())
                    masks.append(kept_mask.cpu())
    finally:
        encoder.train(was_training)
    labels = flat.item_labels[:count].clone()
    if not keep_tokens:
        return Features(pooled=torch.cat(pooled), tokens=None, labels=labels)
    size = max(m.shape[1] for m in masks)
    padded = [_padded(t, m, size) for t, m in zip(sets, masks)]
    return Features(pooled=torch.cat(pooled), tokens=torch.cat([t for t, _ in padded]), labels=labels,
                    token_mask=torch.cat([m for _, m in padded]))


def compact_token_sets(tokens: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each row's marked tokens moved to its front, the rest cut: tokens (M, T, D), mask (M, T)
    -> (M, K, D), (M, K) with K the largest set; padding is zero and unmarked. Keeps what a
    token probe reads (the marked tokens, in grid order) and drops what it skips."""
    largest = int(mask.sum(1).max())
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :largest]  # marked first, in grid order
    kept = torch.gather(tokens, 1, order[..., None].expand(-1, -1, tokens.shape[2]))
    kept_mask = torch.gather(mask, 1, order)
    return kept * kept_mask[..., None].to(kept.dtype), kept_mask


def _padded(tokens: torch.Tensor, mask: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    extra = size - tokens.shape[1]
    if extra < 0:
        raise AnnobootError(f"in-context probes: token sets of {tokens.shape[1]} do not fit in {size}")
    return F.pad(tokens, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def pad_token_sets(features: Features, size: int) -> Features:
    """``features`` with its token sets padded (zeros, unmarked) to ``size`` tokens."""
    tokens, mask = _padded(features.tokens, features.token_mask, size)
    return Features(features.pooled, tokens, features.labels, mask)


def in_context_probe(
    encoder: nn.Module,
    train_scenes: BoxedSceneSource,
    test_scenes: BoxedSceneSource,
    cfg: Any,
    normalize: Normalize,
    device: torch.device | str,
    max_train_items: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Probe (b'): the class of the item in a given box, from the tokens of the whole scene
    inside the box. The probes of ``cfg.probes`` (an EvalConfig): kNN and linear on the
    box-pooled vector, MAP and decoder on the box's tokens. Train items come from
    ``train_scenes`` (at most ``max_train_items``), test items from ``test_scenes``.

    Returns the keys of :func:`annoboot.eval.classification.evaluate` ("knn", "linear", "map": top-1 %,
    "details", "num_train", "num_test", "seconds") and "context": the scenes' resolution and
    the largest box token set.
    """
    start = time.perf_counter()
    check_probe_config(cfg)
    device = torch.device(device)
    keep_tokens = wants_tokens(cfg)
    train = in_context_features(encoder, train_scenes, normalize, cfg.batch_size, device, keep_tokens, max_train_items)
    test = in_context_features(encoder, test_scenes, normalize, cfg.batch_size, device, keep_tokens)
    if keep_tokens:  # one set size for both splits
        size = max(train.tokens.shape[1], test.tokens.shape[1])
        train, test = pad_token_sets(train, size), pad_token_sets(test, size)
    num_classes = len(train_scenes.class_names or ()) or int(max(train.labels.max(), test.labels.max())) + 1
    results = run_probes(train, test, train.labels, test.labels, num_classes, cfg, SINGLE_LABEL, device, progress)
    side = train_scenes.in_memory().shape[-1]
    results["context"] = {"resolution": side, "max_box_tokens": None if train.tokens is None else train.tokens.shape[1]}
    results["num_train"], results["num_test"] = len(train), len(test)
    results["seconds"] = time.perf_counter() - start
    return results


def scene_probe_in_context(
    encoder: nn.Module,
    train_scenes: BoxedSceneSource,
    test_scenes: BoxedSceneSource,
    cfg: Any,
    normalize: Normalize,
    device: torch.device | str,
    progress: bool = False,
) -> Dict[str, Any]:
    """Probe (c) at the scenes' own resolution: which classes a scene holds (macro mAP %), from
    the whole scene encoded unresized (:func:`any_size_encoder`). Keys as
    :func:`annoboot.eval.scenes.multilabel_probe`, plus "context"."""
    side = train_scenes.in_memory().shape[-1]
    results = multilabel_probe(any_size_encoder(encoder), train_scenes, test_scenes, cfg, side, normalize, device, progress)
    results["context"] = {"resolution": side}
    return results


__all__ = [
    "any_size_encoder",
    "box_token_mask",
    "compact_token_sets",
    "in_context_features",
    "in_context_probe",
    "pad_token_sets",
    "pool_box_tokens",
    "scene_probe_in_context",
    "token_grid",
]
