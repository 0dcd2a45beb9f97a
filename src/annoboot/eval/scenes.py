"""Probes of a frozen encoder on Fashion-MNIST scenes (``annoboot.data.scenes``).

Three questions, each answered with kNN, a linear probe and a MAP probe (and the decoder probe
when ``cfg.probes`` names it):

(a) single items: the ordinary probes (:func:`annoboot.eval.classification.evaluate`) on Fashion-MNIST items;
(b) the item inside a given box: :func:`box_probe` crops every item box of the train and test
    scenes (``annoboot.views.render_views``, the renderer training uses), and runs the same
    probes on the crops with the items' classes as labels (top-1 %);
(c) which classes a scene holds: :func:`multilabel_probe` encodes whole scenes and trains
    one-vs-rest heads with binary cross-entropy; reported as **macro mAP** (mean over classes of
    the average precision, in %), with the per-scene F1 at threshold 0.5 alongside.

Probe scenes of split train hold only Fashion-MNIST train items and test scenes only test items.
The same questions asked of the whole scene's features, in context, are in eval/in_context.py;
eval/scene_suite.py runs any set of these probe families by name.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch

from annoboot.batch import ImageBatch
from annoboot.config import EvalConfig
from annoboot.data.base import InMemoryImageSource
from annoboot.data.boxed_scenes import BoxedSceneSource
from annoboot.errors import AnnobootError
from annoboot.eval.classification import evaluate
from annoboot.eval.features import extract_features
from annoboot.eval.multilabel import MULTI_LABEL
from annoboot.eval.probes import check_probe_config, run_probes, wants_tokens
from annoboot.models.encoder import Encoder
from annoboot.views import Normalize, render_views


class BoxCropSource(InMemoryImageSource):
    """Every item box of some scenes, cropped and resized, labelled with the item's class.

    images (via :meth:`in_memory`): (M, C, side, side) uint8, C the scenes' channels, items in
    the scenes' order; labels: (M,) int64. ``max_items`` keeps the first M items.
    """

    def __init__(self, scenes: BoxedSceneSource, side: int, max_items: Optional[int] = None, batch_size: int = 2048,
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
    train_scenes: BoxedSceneSource,
    test_scenes: BoxedSceneSource,
    cfg: EvalConfig,
    img_size: int,
    normalize: Normalize,
    device: torch.device | str,
    max_train_items: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Probe (b): classify the item inside a given box of a scene from the features of its crop.

    Boxes are cropped at ``img_size`` (the encoder's input side) and the probes of ``cfg.probes``
    run as in :func:`annoboot.eval.classification.evaluate` (same keys: "knn", "linear", "map" top-1 %, details,
    counts); the train crops come from ``train_scenes`` (at most ``max_train_items``).
    """
    train = BoxCropSource(train_scenes, img_size, max_train_items, device=device)
    test = BoxCropSource(test_scenes, img_size, device=device)
    return evaluate(encoder, train, test, cfg, img_size, normalize, device, progress)


def multilabel_probe(
    encoder: Encoder,
    train_scenes: BoxedSceneSource,
    test_scenes: BoxedSceneSource,
    cfg: EvalConfig,
    img_size: int,
    normalize: Normalize,
    device: torch.device | str,
    progress: bool = False,
) -> Dict[str, Any]:
    """Probe (c): which classes a whole scene holds, from its features.

    Scenes are resized whole to ``img_size``. The probes of ``cfg.probes`` as
    :func:`annoboot.eval.classification.evaluate` runs them (:func:`annoboot.eval.probes.run_probes`), with the
    multi-label task: kNN votes per class, heads output one sigmoid per class (BCE).

    Returns {"knn"/"linear"/"map"/"decoder": macro mAP %, "f1": {probe: per-scene F1 % at 0.5},
    "details": {probe: settings and val results}, "metric": "mAP", "num_train", "num_test",
    "seconds"}.
    """
    start = time.perf_counter()
    check_probe_config(cfg)
    device = torch.device(device)
    keep_tokens = wants_tokens(cfg)
    train, test = (
        extract_features(encoder, scenes, img_size, normalize, cfg.batch_size, device, keep_tokens, 0, progress)
        for scenes in (train_scenes, test_scenes)
    )
    train_t, test_t = train_scenes.multi_hot(), test_scenes.multi_hot()
    results: Dict[str, Any] = {"metric": "mAP", "f1": {}}
    results.update(run_probes(train, test, train_t, test_t, train_t.shape[1], cfg, MULTI_LABEL, device, progress))
    results["num_train"], results["num_test"] = len(train), len(test)
    results["seconds"] = time.perf_counter() - start
    return results


__all__ = [
    "BoxCropSource",
    "box_probe",
    "multilabel_probe",
]
