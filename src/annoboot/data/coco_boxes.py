"""Photos with labelled boxes from a COCO instances file, as boxed scenes (kind ``coco_boxes``).

For evaluating in context on your own scenes: ``eval.train`` and ``eval.test`` of this kind run
the probes of eval/in_context.py (the object in a given box, read from the whole scene's tokens;
the classes a scene holds) on them, as on the generated scenes. The file is the COCO detection
format (what COCO, LVIS, Objects365 exports and most labelling tools write):
``{"images": [{"id", "file_name", "width"?, "height"?}], "annotations": [{"image_id", "bbox":
[x, y, w, h] in pixels, "category_id", "iscrowd"?}], "categories": [{"id", "name"}]}``, with
``file_name`` relative to ``root``.

Every scene is letterboxed onto a square canvas of ``scene_side`` pixels (its long side scaled
to the side, the rest padded with black at the right or bottom, the boxes moved with it): the
probes encode a batch of scenes at one resolution. Images that cannot be used (missing,
undecodable, sizes that disagree with the file) and boxes that cannot (crowd regions, no area
inside the image) are skipped and counted in one warning; a scene left without boxes is
dropped. A file that is not this format stops with an error naming the entry.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from annoboot.data.boxed_scenes import BoxedSceneSource, SceneItems, largest_item_labels
from annoboot.data.decode import MAX_IMAGE_PIXELS, load_image_file
from annoboot.data.registry import register_source
from annoboot.errors import AnnobootError
from annoboot.option_ranges import COUNT, option

log = logging.getLogger(__name__)

# An image whose decoded aspect ratio differs from the file's width / height by more than this
# is skipped: its boxes were drawn on another orientation or crop of it.
ASPECT_TOLERANCE = 0.02


@dataclass
class CocoBoxOptions:
    """The options of kind coco_boxes (``root`` is the image folder)."""

    annotations: Optional[str] = None  # the COCO instances JSON file
    scene_side: int = option(128, COUNT)  # every scene letterboxed to this square side (pixels)


@dataclass
class CocoImage:
    file_name: str
    size: Optional[Tuple[int, int]]  # (width, height) as the file states it, if it does
    boxes: List[Tuple[float, float, float, float]]  # pixels, xyxy
    labels: List[int]


def _fail(path: str, what: str) -> AnnobootError:
    return AnnobootError(f"COCO annotations {path}: {what}")


def _identifier(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_coco_instances(path: str, limit: Optional[int] = None) -> Tuple[List[CocoImage], List[str], Counter]:
    """The images of a COCO instances file in file order (the first ``limit``), their boxes
    with class indices into the returned class names (categories sorted by id), and the counts
    of boxes skipped by reason. AnnobootError naming the entry for anything not in the format."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise AnnobootError(f"COCO annotations {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be an object with 'images', 'annotations' and 'categories', "
                          f"got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            got = type(data[key]).__name__ if key in data else "nothing"
            raise _fail(path, f"'{key}' must be a list, got {got}")

    categories: Dict[Any, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not (isinstance(cat, dict) and _identifier(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise _fail(path, f"categories[{i}] must be an object with an 'id' (integer or string) and a string "
                              f"'name', got {cat!r:.80}")
        if cat["id"] in categories:
            raise _fail(path, f"categories[{i}]: id {cat['id']} is listed twice")
        categories[cat["id"]] = cat["name"]
    if not categories:
        raise _fail(path, "'categories' is empty: the probes need at least one class")
    order = sorted(categories, key=lambda cat_id: (isinstance(cat_id, str), cat_id))  # ids of both types sort
    class_of = {cat_id: index for index, cat_id in enumerate(order)}
    class_names = [categories[cat_id] for cat_id in order]

    images: Dict[Any, CocoImage] = {}
    for i, entry in enumerate(data["images"]):
        if not (isinstance(entry, dict) and _identifier(entry.get("id")) and isinstance(entry.get("file_name"), str)
                and entry["file_name"]):
            raise _fail(path, f"images[{i}] must be an object with an 'id' (integer or string) and a 'file_name', "
                              f"got {entry!r:.80}")
        if entry["id"] in images:
            raise _fail(path, f"images[{i}]: id {entry['id']} is listed twice")
        width, height = entry.get("width"), entry.get("height")
        size = None
        if width is not None or height is not None:
            if not (_number(width) and _number(height) and width > 0 and height > 0):
                raise _fail(path, f"images[{i}] ({entry['file_name']}): width and height must be positive numbers, "
                                  f"got {width!r} and {height!r}")
            size = (int(width), int(height))
        images[entry["id"]] = CocoImage(entry["file_name"], size, [], [])

    skipped: Counter = Counter()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _fail(path, f"annotations[{i}] must be an object, got {ann!r:.80}")
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if not (_identifier(image_id) and image_id in images):
            raise _fail(path, f"annotations[{i}]: image_id {image_id!r:.40} is not in 'images'")
        if not (_identifier(category_id) and category_id in class_of):
            raise _fail(path, f"annotations[{i}]: category_id {category_id!r:.40} is not in 'categories'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            raise _fail(path, f"annotations[{i}]: 'bbox' must be [x, y, width, height], 4 finite numbers, "
                              f"got {bbox!r:.80}")
        if ann.get("iscrowd", 0) not in (0, 1):  # True and False are 1 and 0
            raise _fail(path, f"annotations[{i}]: 'iscrowd' must be 0 or 1, got {ann.get('iscrowd')!r:.40}")
        if ann.get("iscrowd", 0):
            skipped["crowd region"] += 1
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            skipped["no area"] += 1
            continue
        image = images[image_id]
        image.boxes.append((x, y, x + w, y + h))
        image.labels.append(class_of[category_id])
    kept = list(images.values())
    return (kept if limit is None else kept[:limit]), class_names, skipped


def letterbox(image: torch.Tensor, side: int) -> Tuple[torch.Tensor, Tuple[float, float]]:
    """(C, H, W) uint8 -> (C, side, side) uint8, its long side scaled to ``side`` (Pillow's
    bilinear filter, antialiased when shrinking) and the rest black at the right or bottom; and
    the (x, y) fractions of the canvas it covers. Pillow, not torch: torch's antialiased resize
    spreads a pixel over the whole other axis when one output side is 1 (torch 2.x)."""
    channels, height, width = image.shape
    scale = side / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    pixels = image.permute(1, 2, 0).numpy()
    planes = [np.asarray(Image.fromarray(pixels[..., c]).resize((new_w, new_h), Image.Resampling.BILINEAR))
              for c in range(channels)]
    canvas = torch.zeros((channels, side, side), dtype=torch.uint8)
    canvas[:, :new_h, :new_w] = torch.from_numpy(np.stack(planes))
    return canvas, (new_w / side, new_h / side)


def canvas_boxes(boxes: List[Tuple[float, float, float, float]], size: Tuple[float, float],
                 cover: Tuple[float, float]) -> Tuple[List[List[float]], List[int]]:
    """Pixel xyxy boxes of an image of ``size`` (width, height), clipped to it, as normalised
    xyxy on its letterbox canvas (the image covering the ``cover`` (x, y) fractions of it from
    the top left); and the indices of the boxes kept (those with area inside the image)."""
    width, height = size
    placed, kept = [], []
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        x0, x1 = max(x0, 0.0) / width, min(x1, width) / width
        y0, y1 = max(y0, 0.0) / height, min(y1, height) / height
        if x1 > x0 and y1 > y0:
            placed.append([x0 * cover[0], y0 * cover[1], x1 * cover[0], y1 * cover[1]])
            kept.append(index)
    return placed, kept


class CocoBoxSource(BoxedSceneSource):
    """The images of a COCO instances file (under ``root``) letterboxed to ``scene_side``, with
    their boxes (normalised xyxy on the canvas) and classes (``class_names``: the categories by
    id). See the module docstring for what is skipped."""

    def __init__(self, root: str, annotations: str, scene_side: int = 128, limit: Optional[int] = None,
                 max_pixels: int = MAX_IMAGE_PIXELS, read_timeout: float = 0.0):
        if not os.path.isdir(root):
            raise AnnobootError(f"coco_boxes root {root}: not a folder of images")
        entries, self.class_names, skipped = read_coco_instances(annotations, limit)
        canvases: List[torch.Tensor] = []
        scene_of: List[int] = []
        boxes: List[List[float]] = []
        labels: List[int] = []
        for entry in entries:
            path = os.path.join(root, entry.file_name)
            if not os.path.isfile(path):
                skipped["image file missing"] += 1
                continue
            image, reason = load_image_file(path, scene_side, max_pixels, read_timeout)
            if image is None:
                skipped[f"image {reason}"] += 1
                continue
            height, width = image.shape[1:]
            full_w, full_h = entry.size or (width, height)  # the boxes' pixel frame
            if abs(math.log((width / height) / (full_w / full_h))) > ASPECT_TOLERANCE:
                skipped["image whose aspect differs from its width and height in the file"] += 1
                continue
            canvas, cover = letterbox(image, scene_side)
            placed, inside = canvas_boxes(entry.boxes, (full_w, full_h), cover)
            if len(placed) < len(entry.boxes):
                skipped["box outside its image"] += len(entry.boxes) - len(placed)
            boxes += placed
            labels += [entry.labels[i] for i in inside]
            scene_of += [len(canvases)] * len(placed)
            if placed:
                canvases.append(canvas)
            else:
                skipped["image without boxes"] += 1
        self.name = f"coco_boxes/{os.path.basename(annotations)}"
        # Reason first, count after: "image without boxes: 7", where "7 image without boxes" misreads.
        report = "; ".join(f"{why}: {n}" for why, n in skipped.most_common()) or "none"
        if skipped:
            log.warning("coco_boxes %s: skipped, by reason: %s", annotations, report)
        self.skipped = dict(skipped)
        if not canvases:
            raise AnnobootError(f"coco_boxes {annotations}: no image of {len(entries)} could be used with a box "
                                f"(skipped, by reason: {report})")
        self._images = torch.stack(canvases)
        self.scenes = SceneItems(torch.tensor(scene_of, dtype=torch.int64), torch.tensor(boxes, dtype=torch.float32),
                                 torch.tensor(labels, dtype=torch.int64))
        self.labels = largest_item_labels(self.scenes, len(canvases))


__all__ = ["CocoBoxOptions", "CocoBoxSource", "canvas_boxes", "letterbox", "read_coco_instances"]


@register_source("coco_boxes", options=CocoBoxOptions)
def build_coco_boxes(cfg) -> CocoBoxSource:
    if not cfg.root or not cfg.annotations:
        raise AnnobootError("kind coco_boxes needs root=<image folder> and annotations=<COCO instances JSON>, "
                            "e.g. eval.test.root=/data/val2017 eval.test.annotations=/data/instances_val2017.json")
    return CocoBoxSource(cfg.root, cfg.annotations, cfg.scene_side, cfg.limit, cfg.max_pixels, cfg.read_timeout)
