"""Scenes with labelled boxes: what the scene probes read (eval/in_context.py, eval/scenes.py).

A boxed-scene source is an in-memory source of equal-size scenes that also keeps, for evaluation
only, the box and class of every labelled object in them. Two kinds implement it: fmnist_scenes
(generated, data/scenes.py) and coco_boxes (photos with a COCO instances file,
data/coco_boxes.py). The probes need no more than this module names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from annoboot.data.base import InMemoryImageSource


@dataclass
class SceneItems:
    """The labelled objects of N scenes, flat: one row per object, grouped by scene.

    item_scene: (M,) int64 scene of each object, ascending; item_boxes: (M, 4) float32
    normalised xyxy; item_labels: (M,) int64 class indices into the source's ``class_names``.
    """

    item_scene: torch.Tensor
    item_boxes: torch.Tensor
    item_labels: torch.Tensor


class BoxedSceneSource(InMemoryImageSource):
    """Equal-size scenes (``in_memory()``: (N, C, H, W) uint8) and their labelled boxes.

    Subclasses set ``_images``, ``scenes`` (anything with the fields of :class:`SceneItems`),
    ``class_names``, ``name`` and ``labels``: per scene the class of its largest object
    (:func:`largest_item_labels`), for the single-label probes of whole images.
    """

    scenes: SceneItems
    class_names: List[str]

    def multi_hot(self) -> torch.Tensor:
        """(N, classes) float32: 1 where the scene holds an object of that class."""
        targets = torch.zeros(len(self), len(self.class_names))
        targets[self.scenes.item_scene, self.scenes.item_labels] = 1.0
        return targets

    def describe(self) -> str:
        return f"{self.name}: {len(self)} scenes, {self.scenes.item_labels.numel()} items"


def largest_item_labels(items: SceneItems, num_scenes: int) -> torch.Tensor:
    """(num_scenes,) int64: the class of each scene's largest box (ties: the later one, which
    lies on top in a pasted scene). Every scene must hold at least one box."""
    counts = torch.bincount(items.item_scene, minlength=num_scenes).tolist()
    labels = []
    for boxes, classes in zip(items.item_boxes.split(counts), items.item_labels.split(counts)):
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        labels.append(classes[area.numel() - 1 - int(torch.argmax(area.flip(0)))])
    return torch.stack(labels)


__all__ = ["BoxedSceneSource", "SceneItems", "largest_item_labels"]
