"""Value maps: where in an image the value function expects to find an annotation (computed
here; viz/value_map.py draws them).

For an image x (the whole image as the source view), an annotation l and a grid of target
boxes b, the map is Q(l | x, a = move(x -> b)), the softmax over the annotation set computed
exactly as in training: the move is the target box in the source crop's frame
(:func:`annoboot.actions.relative_box`), quantised into action tokens
(:func:`annoboot.actions.action_tokens`), read by the value decoder against the source view's
encoder tokens, and scored against the annotation keys psi_AB with the learned scale t_AB.

What an annotation is depends on the method (``Method.annotation_kind``: images, captions or
prototypes); :func:`annotation_keys` picks the annotations to show for that kind from a small
registry (:data:`ANNOTATION_SETS`) and asks the method for their keys
(``Method.annotation_keys``). A new AB method whose annotations are one of these kinds needs
nothing here; a new kind adds one function decorated with :func:`register_annotation_set`.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from annoboot.actions import relative_box
from annoboot.batch import ImageBatch
from annoboot.data.base import ImageSource
from annoboot.errors import AnnobootError
from annoboot.methods import Method
from annoboot.views import full_image_boxes, render_full_images, render_views

# Boxes per decoder call: the block-diagonal mask makes the outputs independent of the grouping,
# so chunking only bounds memory (the attention mask grows with (4 * boxes)^2).
_BOXES_PER_CALL = 256
# Annotation images drawn from a source without labels.
_UNLABELLED_ANNOTATIONS = 10
# Captions drawn from a captioned source.
_MAX_CAPTIONS = 16


@dataclass
class AnnotationSet:
    """The annotations a value map is scored against.

    keys: (L, d) psi_AB, the annotation keys of the value function (not normalised).
    names: L short labels, for titles and the JSON output.
    images: (L, H, W, 3) float in [0, 1] to draw beside the map (annotations that are images), or None.
    texts: L strings to draw beside the map (captions, prototype descriptions), or None.
    default: the annotation shown when none is asked for; None means the one with the highest
        mean probability over the grid.
    """

    keys: torch.Tensor
    names: List[str]
    images: Optional[np.ndarray] = None
    texts: Optional[List[str]] = None
    default: Optional[int] = None
    # Where each annotation truly is in the viewed image, (L, 4) normalised xyxy with NaN rows for
    # annotations not in it (scene items), or None: drawn over the map.
    true_boxes: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.keys.shape[0]


@dataclass
class ViewedImage:
    """The image a value map is drawn for: one decoded image from a source, and what is known of it."""

    batch: ImageBatch  # one image, on the method's device
    index: int
    label: Optional[int] = None
    label_name: Optional[str] = None
    caption: Optional[str] = None


AnnotationSetFn = Callable[[Method, ImageSource, ViewedImage], AnnotationSet]
ANNOTATION_SETS: Dict[str, AnnotationSetFn] = {}


def register_annotation_set(kind: str) -> Callable[[AnnotationSetFn], AnnotationSetFn]:
    """Decorator: ``fn(method, source, image) -> AnnotationSet`` serves value maps of methods
    whose ``annotation_kind`` is ``kind``."""

    def register(fn: AnnotationSetFn) -> AnnotationSetFn:
        ANNOTATION_SETS[kind] = fn
        return fn

    return register


def require_value_function(method: Method) -> None:
    """AnnobootError unless ``method`` has a value function over a kind of annotation viz knows."""
    name, kind = method.cfg.method.name, method.annotation_kind
    if kind is None or getattr(method, "value_function", None) is None:
        raise AnnobootError(
            f"value maps need an ab_* run (an annotation-bootstrapping method, with a value function); "
            f"this run's method.name is '{name}' (pass --curves-only to draw only its training curves)"
        )
    if kind not in ANNOTATION_SETS:
        raise AnnobootError(
            f"method.name '{name}' has annotations of kind '{kind}', which value maps do not draw yet: add a "
            "function with @register_annotation_set in annoboot/viz/value_map.py"
        )


@torch.no_grad()
def annotation_keys(method: Method, source: ImageSource, image: ViewedImage) -> AnnotationSet:
    """The annotation set of ``method`` for a value map of ``image`` (taken from ``source``)."""
    require_value_function(method)
    return ANNOTATION_SETS[method.annotation_kind](method, source, image)


def load_image(source: ImageSource, index: int, device: torch.device | str = "cpu") -> ViewedImage:
    """Image ``index`` of ``source`` as a one-image batch, with its label and caption if the source has them."""
    if not 0 <= index < len(source):
        raise AnnobootError(f"--image-index {index} is out of range: {source.name} has {len(source)} images")
    pixels = source[index]
    if pixels is None:
        raise AnnobootError(f"--image-index {index}: image {index} of {source.name} cannot be decoded; pick another")
    batch = ImageBatch(pixels[None], torch.tensor([pixels.shape[1:]], dtype=torch.int64)).to(device)
    label = None if source.labels is None else int(source.labels[index])
    label_name = None
    if label is not None:
        label_name = source.class_names[label] if source.class_names else f"class {label}"
    caption = None if source.captions is None else source.captions[index]
    return ViewedImage(batch, index, label, label_name, caption)


def grid_boxes(grid: int, box_scale: float) -> torch.Tensor:
    """(G, G, 4) target boxes: squares of side ``box_scale`` (fraction of the image side) sliding evenly.

    Row i moves down, column j right; the first and last boxes touch the image's borders. With
    ``box_scale = 1 / grid`` the boxes are exactly the cells of a G x G grid.
    """
    if grid < 1:
        raise AnnobootError(f"--grid must be at least 1, got {grid}")
    if not 0 < box_scale <= 1:
        raise AnnobootError(f"--box-scale must be in (0, 1] (a fraction of the image side), got {box_scale}")
    starts = torch.linspace(0, 1 - box_scale, grid) if grid > 1 else torch.tensor([(1 - box_scale) / 2])
    y0, x0 = torch.meshgrid(starts, starts, indexing="ij")
    return torch.stack([x0, y0, x0 + box_scale, y0 + box_scale], dim=-1)


def default_box_scale(method: Method, grid: int) -> float:
    """A grid cell (1 / G), but no smaller than the smallest bootstrap crop the decoder was trained to reach."""
    smallest_area = method.cfg.views.bootstrap_scale[0]
    return min(1.0, max(1.0 / grid, math.sqrt(smallest_area)))


@torch.no_grad()
def value_probabilities(method: Method, image: ImageBatch, keys: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Q(. | x, a) for the moves from the whole image x to each of ``boxes``.

    image: a one-image batch on the method's device; keys: (L, d) annotation keys;
    boxes: (..., 4) target boxes in the image's normalised frame.
    Returns (..., L) float32 probabilities: each row sums to 1 over the annotation set.
    """
    vf = method.value_function
    device = keys.device
    side = getattr(method, "source_size", method.cfg.views.img_size)  # views.bootstrap_source_size
    views = render_full_images(image, side, method.normalize)
    tokens = method.encoder(views).tokens  # (1, T, D): the source view's tokens, as in training
    source_box = full_image_boxes(1, 1, device)[0, 0]
    flat = boxes.reshape(-1, 4).to(device)
    moves = vf.move_tokens(relative_box(source_box, flat))  # (K, 4)
    phi = torch.cat([vf.values(tokens, chunk[None])[0] for chunk in moves.split(_BOXES_PER_CALL)])  # (K, d)
    logits = vf.score(phi, keys)  # as in training, for a source with any number of targets
    return torch.softmax(logits.float(), dim=-1).view(*boxes.shape[:-1], keys.shape[0]).cpu()


# ---------------------------------------------------------------------------------------------
# Annotation sets, by kind of annotation.


@register_annotation_set("image")
def _image_annotations(method: Method, source: ImageSource, image: ViewedImage) -> AnnotationSet:
    """Annotation images: the first image of each class of the source (other than the viewed one).

    Keys are psi_AB of their whole-image views (``method.annotation_keys(views)``); the softmax
    runs over this set, as training's runs over the annotation batch. Without labels, the first
    few other images of the source. The default annotation is the viewed image's class.
    """
    if hasattr(source, "item_boxes"):
        return _scene_item_keys(method, source, image)
    others = (i for i in range(len(source)) if i != image.index)
    if source.labels is not None:
        num_classes = len(torch.unique(source.labels))
        first: Dict[int, int] = {}
        for i in others:
            first.setdefault(int(source.labels[i]), i)
            if len(first) == num_classes:
                break
        chosen = [first[c] for c in sorted(first)]
        names = [source.class_names[c] if source.class_names else f"class {c}" for c in sorted(first)]
        default = sorted(first).index(image.label) if image.label in first else None
    else:
        chosen = [i for i, _ in zip(others, range(_UNLABELLED_ANNOTATIONS))]
        names = [f"image {i}" for i in chosen]
        default = None
    if not chosen:
        raise AnnobootError(f"{source.name} has no other image to use as an annotation (eval.test)")
    device = image.batch.images.device
    img_size = method.cfg.views.img_size
    views = []
    for i in chosen:
        pixels = source[i]
        if pixels is None:
            raise AnnobootError(f"annotation image {i} of {source.name} cannot be decoded (eval.test)")
        one = ImageBatch(pixels[None], torch.tensor([pixels.shape[1:]], dtype=torch.int64)).to(device)
        views.append(render_views(one, full_image_boxes(1, 1, device), img_size))
    views = torch.cat(views)  # (L, 3, S, S) in [0, 1]
    keys = method.annotation_keys(views)
    return AnnotationSet(keys, names, images=views.permute(0, 2, 3, 1).cpu().numpy(), default=default)


def _scene_item_keys(method: Method, source: ImageSource, image: ViewedImage) -> AnnotationSet:
    """On scenes: the crops of the viewed scene's items (their true boxes outlined), then those
    of the next scenes as the rest of the annotation set; the default is the largest item."""
    device = image.batch.images.device
    img_size = method.cfg.views.img_size
    count = min(len(source), image.index + 1 + _UNLABELLED_ANNOTATIONS)
    chosen = [image.index] + [i for i in range(image.index + 1, count)]
    views, names, true_boxes = [], [], []
    for i in chosen:
        pixels = source[i]
        one = ImageBatch(pixels[None], torch.tensor([pixels.shape[1:]], dtype=torch.int64)).to(device)
        boxes = source.item_boxes[i]
        views.append(render_views(one, boxes.to(device)[None], img_size))
        for box, label in zip(boxes, source.item_labels[i]):
            where = "" if i == image.index else f" of scene {i}"
            names.append(f"{source.class_names[int(label)]}{where}")
            true_boxes.append(box if i == image.index else torch.full((4,), float("nan")))
    views = torch.cat(views)
    keys = method.annotation_keys(views)
    own = source.item_boxes[image.index]
    largest = int(((own[:, 2] - own[:, 0]) * (own[:, 3] - own[:, 1])).argmax())
    return AnnotationSet(keys, names, images=views.permute(0, 2, 3, 1).cpu().numpy(), default=largest,
                         true_boxes=torch.stack(true_boxes))


@register_annotation_set("prototype")
def _prototype_annotations(method: Method, source: ImageSource, image: ViewedImage) -> AnnotationSet:
    """Annotations are a learned set (ABDINO: DINO's prototypes); keys are the method's own (psi_AB, (K, d))."""
    keys = method.annotation_keys(None).detach()
    count = keys.shape[0]
    names = [f"prototype {k}" for k in range(count)]
    texts = [f"prototype {k} of {count}" for k in range(count)]
    return AnnotationSet(keys, names, texts=texts)


@register_annotation_set("caption")
def _caption_annotations(method: Method, source: ImageSource, image: ViewedImage) -> AnnotationSet:
    """Annotations are captions; keys are ``method.annotation_keys(texts)``.

    The set: the viewed image's own caption (the default) and those of the next images of a
    captioned source; otherwise one prompt per class name (eval.zero_shot_templates[0]), the
    viewed image's class being the default.
    """
    if source.captions is not None:
        texts: List[str] = []
        default = None
        if image.caption:
            texts.append(image.caption)
            default = 0
        for i in range(len(source)):
            if len(texts) >= _MAX_CAPTIONS:
                break
            caption = source.captions[i]
            if i != image.index and caption and caption not in texts:
                texts.append(caption)
    elif source.class_names:
        template = method.cfg.eval.zero_shot_templates[0]
        texts = [template.format(name) for name in source.class_names]
        default = image.label
    else:
        raise AnnobootError(
            f"{method.cfg.method.name} value maps need captions or class names, and eval.test ({source.name}) has neither"
        )
    if not texts:
        raise AnnobootError(
            f"{method.cfg.method.name} value maps need captions, and every caption of eval.test ({source.name}) is empty"
        )
    keys = method.annotation_keys(texts)
    names = [textwrap.shorten(t, 40) for t in texts]
    return AnnotationSet(keys, names, texts=texts, default=default)


@dataclass
class ValueMap:
    """A computed value map: probabilities over the whole annotation set for every grid box."""

    probs: torch.Tensor  # (G, G, L), sums to 1 over L
    boxes: torch.Tensor  # (G, G, 4) normalised xyxy
    annotations: AnnotationSet
    chosen: int  # the annotation drawn

    @property
    def grid(self) -> np.ndarray:
        """(G, G) probability of the chosen annotation per box."""
        return self.probs[..., self.chosen].numpy()


def compute_value_map(
    method: Method,
    source: ImageSource,
    image: ViewedImage,
    annotation: Optional[int] = None,
    grid: int = 8,
    box_scale: Optional[float] = None,
) -> ValueMap:
    """The value map of ``image`` for ``annotation`` (an index into the method's annotation set)."""
    annotations = annotation_keys(method, source, image)
    boxes = grid_boxes(grid, default_box_scale(method, grid) if box_scale is None else box_scale)
    probs = value_probabilities(method, image.batch, annotations.keys, boxes)
    if annotation is None:
        annotation = annotations.default
    if annotation is None:
        annotation = int(probs.mean(dim=(0, 1)).argmax())
    if not 0 <= annotation < len(annotations):
        raise AnnobootError(
            f"--annotation {annotation} is out of range: this {method.cfg.method.name} run's annotation set has "
            f"{len(annotations)} entries (0..{len(annotations) - 1})"
        )
    return ValueMap(probs, boxes, annotations, annotation)
