"""Fashion-MNIST scenes as an image source (kind ``fmnist_scenes``): non-object-centric canvases
of several real items with weak captions, made by data/scene_generator.py.

Each scene keeps, for evaluation only, the box and label of every item; a scene of split s
holds items of the Fashion-MNIST split s only (the source builds its pool from its own split).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from annoboot.data.boxed_scenes import BoxedSceneSource, largest_item_labels
from annoboot.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNISTSource
from annoboot.data.registry import register_source
from annoboot.data.scene_generator import SceneGeneratorOptions, check_scenes, generate_scenes
from annoboot.errors import AnnobootError


@dataclass
class SceneSourceOptions:
    """The options of kind fmnist_scenes (``data.<stream>.scenes.*``)."""

    scenes: SceneGeneratorOptions = field(default_factory=SceneGeneratorOptions)

    @staticmethod
    def check(src, key: str, selected: bool) -> None:
        if selected:
            check_scenes(src.scenes, f"{key}.scenes")


class SceneSource(BoxedSceneSource):
    """Fashion-MNIST scenes of one split as an in-memory source.

    images (via :meth:`in_memory`): (N, 1, canvas, canvas) uint8; ``source[i]``: (1, H, W).
    labels: (N,) int64, the class of each scene's largest item (ties: the one pasted last, which
    nothing covers), for single-label probes. captions: N weak captions.
    item_boxes / item_labels / item_indices: N tensors, (k_i, 4) float32 normalised xyxy,
    (k_i,) int64 classes, (k_i,) int64 indices into the Fashion-MNIST split ``pool_split``.
    :meth:`multi_hot` gives the classes present per scene (multi-label probes).

    Args:
        cfg: the scene settings; ``limit`` keeps the first N of ``cfg.num_scenes`` scenes.
        split: train | test: the Fashion-MNIST split every item and clutter patch comes from.
        root: the Fashion-MNIST folder (default: the Debian package's).
        pool: an already loaded Fashion-MNIST source of the same split (saves reading it again).
    """

    def __init__(
        self,
        cfg: SceneGeneratorOptions | None = None,
        split: str = "train",
        root: str | None = None,
        limit: int | None = None,
        pool: FashionMNISTSource | None = None,
    ):
        cfg = cfg or SceneGeneratorOptions()
        check_scenes(cfg)
        cfg = cfg.resolved()  # the settings as generated, the preset's values filled in
        if limit is not None and limit <= 0:
            raise AnnobootError(f"fmnist_scenes limit must be a positive number of scenes, got {limit}")
        if pool is None:
            pool = FashionMNISTSource(root=root, split=split, limit=cfg.pool_limit)
        if pool.split != split:  # the one place a split could leak: refuse it outright
            raise AnnobootError(f"fmnist_scenes of split '{split}' were given items of split '{pool.split}'")
        num = cfg.num_scenes if limit is None else min(cfg.num_scenes, limit)
        scenes = generate_scenes(pool.in_memory(), pool.labels, cfg, split, num)
        self.cfg = cfg
        self.split = split
        self.pool_split = pool.split
        self.name = f"fmnist_scenes/{split}"
        self.class_names = list(FASHION_MNIST_CLASSES)
        self.scenes = scenes
        self._images = scenes.images
        self.captions = scenes.captions
        self.named_classes = scenes.named_classes
        counts = torch.bincount(scenes.item_scene, minlength=num).tolist()
        self.item_boxes = list(scenes.item_boxes.split(counts))
        self.item_labels = list(scenes.item_labels.split(counts))
        self.item_indices = list(scenes.item_indices.split(counts))
        self.labels = largest_item_labels(scenes, num)


__all__ = ["SceneSource", "SceneSourceOptions"]


@register_source("fmnist_scenes", options=SceneSourceOptions)
def build_scene_source(cfg) -> SceneSource:
    return SceneSource(cfg.scenes, split=cfg.split, root=cfg.root, limit=cfg.limit)
