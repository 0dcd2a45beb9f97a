"""The scene probe families by name, run on one encoder: what the scene benchmarks and
``annoboot eval`` on scene sources share.

- "items"             (a) Fashion-MNIST items, whole images (:func:`annoboot.eval.classification.evaluate`);
- "boxes"             (b) the item in a box, cropped and resized (:func:`eval.scenes.box_probe`);
- "multilabel"        (c) the classes a scene holds, the scene resized to the views' size;
- "in_context"        (b') the item in a box, read from the whole scene's tokens at its own
                      resolution (:func:`eval.in_context.in_context_probe`);
- "scenes_in_context" (c') the classes a scene holds, the scene at its own resolution.

Each family runs the probes of ``eval.probes`` (kNN, linear, MAP, ...) and reports top-1 % or,
for the multi-label families, macro mAP %.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from torch import nn

from annoboot.data.base import ImageSource
from annoboot.data.boxed_scenes import BoxedSceneSource
from annoboot.errors import AnnobootError
from annoboot.eval.classification import evaluate
from annoboot.eval.in_context import in_context_probe, scene_probe_in_context
from annoboot.eval.registry import SCENE_PROBE_FAMILIES as SCENE_FAMILIES
from annoboot.eval.scenes import box_probe, multilabel_probe
from annoboot.views import Normalize
FAMILY_NAMES = {"items": "(a) items top-1 %", "boxes": "(b) boxes top-1 %", "multilabel": "(c) scenes mAP %",
                "in_context": "(b') in context top-1 %", "scenes_in_context": "(c') scenes in context mAP %"}


def scene_family(
    family: str,
    encoder: nn.Module,
    scene_train: BoxedSceneSource,
    scene_test: BoxedSceneSource,
    cfg: Any,
    img_size: int,
    normalize: Normalize,
    device: Any,
    item_train: Optional[ImageSource] = None,
    item_test: Optional[ImageSource] = None,
    max_box_train_items: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """The results of one probe family (module docstring) with the probes of ``cfg`` (an
    EvalConfig); ``img_size`` is the views' side (families that resize), ``max_box_train_items``
    caps the train items of the box families."""
    if family not in SCENE_FAMILIES:
        raise AnnobootError(f"unknown scene probe family '{family}'; choose from {', '.join(SCENE_FAMILIES)}")
    if family == "items":
        if item_train is None or item_test is None:
            raise AnnobootError("probe family 'items' needs Fashion-MNIST item sources")
        return evaluate(encoder, item_train, item_test, cfg, img_size, normalize, device, progress)
    if family == "boxes":
        return box_probe(encoder, scene_train, scene_test, cfg, img_size, normalize, device, max_box_train_items, progress)
    if family == "multilabel":
        return multilabel_probe(encoder, scene_train, scene_test, cfg, img_size, normalize, device, progress)
    if family == "in_context":
        return in_context_probe(encoder, scene_train, scene_test, cfg, normalize, device, max_box_train_items, progress)
    return scene_probe_in_context(encoder, scene_train, scene_test, cfg, normalize, device, progress)


def format_scene_results(results: Dict[str, Dict[str, Any]]) -> List[str]:
    """One line per probe family: "(b') in context top-1 %   kNN 61.20  linear 64.02  MAP 70.11"."""
    lines = []
    for family, result in results.items():
        cells = "  ".join(f"{label} {result[key]:.2f}" for key, label in
                          (("knn", "kNN"), ("linear", "linear"), ("map", "MAP"), ("decoder", "decoder")) if key in result)
        lines.append(f"{FAMILY_NAMES.get(family, family):<28} {cells}")
    return lines


__all__ = ["FAMILY_NAMES", "SCENE_FAMILIES", "format_scene_results", "scene_family"]
