"""The Fashion-MNIST scene generator: canvases of several real items with weak captions.

A scene is a square grayscale canvas holding several Fashion-MNIST items at random positions
and sizes over a black background with faint clutter (patches cut from other items). Each
scene keeps, for evaluation only, the box (normalised xyxy) and label of every item, and has a
weak caption (data/scene_captions.py) that names some, not all, of its item classes (or, with
``captions: complete``, every class).

Rules the generator keeps (tests/data/test_data_scenes.py checks them):

- a scene of split s draws its items and clutter from the Fashion-MNIST split s and no other:
  :func:`generate_scenes` only ever sees one pool, and the source (data/scenes.py) builds that
  pool from its own split, so a test item never reaches a training scene;
- everything is a function of (seed, split, scene index): scenes are generated in chunks of
  :data:`CHUNK` with their own random streams, so scene i is the same whatever the number of
  scenes asked for (a limit keeps a prefix of the same set);
- a caption names only classes present in its scene (data/scene_captions.py).

Generation is vectorised per item layer (every scene's k-th item is placed and pasted at
once), so 20k scenes of 96 px take a few seconds on one CPU core.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from annoboot.data.scene_captions import CAPTION_KINDS
from annoboot.errors import AnnobootError
from annoboot.option_ranges import COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY, option

# Named layouts: the values a SceneGeneratorOptions option left at None takes (``scenes.preset``).
SCENE_PRESETS: Dict[str, Dict[str, Any]] = {
    # The first scenes: 2-5 items of 20-56 px on a 96-px black canvas with faint clutter. Crop
    # consistency still works on them: one item covers a quarter of most SimCLR crops.
    "classic": {
        "canvas": 96, "items": [2, 5], "item_size": [20, 56], "max_overlap": 0.2, "clutter": 6,
        "clutter_contrast": 0.3, "background": "none", "background_level": [0.2, 0.6],
        "background_contrast": [0.1, 0.3], "background_period": [4.0, 16.0],
    },
    # Scenes where crop consistency is misled (docs/experiments/crowded_scenes.md, "Scenes where crop consistency
    # fails"): 4-6 small items with little overlap, so two crops of a scene seldom show the same
    # item, over a background grating of the scene's own orientation, period, phase, level and
    # contrast: shared by every crop of the scene, drawn apart from its items, so it says
    # nothing about their classes.
    "crowded": {
        "canvas": 64, "items": [4, 6], "item_size": [12, 20], "max_overlap": 0.05, "clutter": 0,
        "clutter_contrast": 0.3, "background": "grating", "background_level": [0.2, 0.6],
        "background_contrast": [0.1, 0.3], "background_period": [4.0, 16.0],
    },
}
BACKGROUNDS = ("none", "grating", "plaid")


@dataclass
class SceneGeneratorOptions:
    """fmnist_scenes: canvases of several Fashion-MNIST items with weak captions (below).

    A scene of split s (``SourceConfig.split``) draws its items and clutter from the Fashion-MNIST
    split s only. Scene i depends only on (seed, split, i): a limit keeps a prefix of the same set.
    ``preset`` names a layout (:data:`SCENE_PRESETS`): every option below left at None takes
    the preset's value, an option given overrides it (:meth:`resolved`).
    """

    preset: str = "classic"  # classic | crowded
    num_scenes: int = option(20000, COUNT)
    canvas: Optional[int] = option(None, COUNT)  # side of the square canvas in pixels
    items: Optional[List[int]] = option(None, COUNT)  # items per scene, inclusive range
    item_size: Optional[List[int]] = option(None, COUNT)  # side of a pasted item in px, inclusive range
    max_overlap: Optional[float] = option(None, PROBABILITY)  # largest share of the smaller of two item boxes they may share
    clutter: Optional[int] = option(None, NON_NEGATIVE)  # background patches of other items per scene: uniform in [0, clutter]
    clutter_contrast: Optional[float] = option(None, PROBABILITY)  # their brightness relative to a pasted item
    # Per-scene background under the items, independent of them: none (black), grating (one
    # sinusoid of random orientation and phase), plaid (the sum of three).
    background: Optional[str] = None
    background_level: Optional[List[float]] = option(None, PROBABILITY)  # mean grey, fraction of white: [low, high]
    background_contrast: Optional[List[float]] = option(None, PROBABILITY)  # sinusoid amplitude, fraction of white: [low, high]
    background_period: Optional[List[float]] = option(None, POSITIVE)  # sinusoid period in px: [low, high]
    # weak: a caption names some, not all, of the scene's classes; complete: every class. The
    # captions have their own random stream: images and layout are the same under either.
    captions: str = "weak"
    # Share of canvases holding one whole item on black (an items source mixed into the scenes).
    single_fraction: float = option(0.0, PROBABILITY)
    seed: int = option(0, NON_NEGATIVE)
    pool_limit: Optional[int] = option(None, COUNT)  # use only the first N Fashion-MNIST images of the split

    def resolved(self) -> "SceneGeneratorOptions":
        """A copy with every option the preset sets filled in (AnnobootError for an unknown preset)."""
        if self.preset not in SCENE_PRESETS:
            raise AnnobootError(f"bad config: key 'scenes.preset' is '{self.preset}'; choose one of {', '.join(SCENE_PRESETS)}")
        preset = SCENE_PRESETS[self.preset]
        return replace(self, **{name: copy.deepcopy(value) for name, value in preset.items() if getattr(self, name) is None})


def _range_error(key: str, pair: Sequence[float], low: float, high: float) -> Optional[str]:
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        return f"'{key}' must be [low, high] with {low:g} <= low <= high <= {high:g}, got {list(pair)}"
    return None


def check_scenes(scenes: SceneGeneratorOptions, key: str = "scenes") -> None:
    """AnnobootError naming ``key``.<option> when a scene setting cannot work."""
    if scenes.preset not in SCENE_PRESETS:
        raise AnnobootError(f"bad config: key '{key}.preset' is '{scenes.preset}'; choose one of {', '.join(SCENE_PRESETS)}")
    scenes = scenes.resolved()
    bad = None
    if scenes.num_scenes < 1:
        bad = f"'{key}.num_scenes' must be >= 1, got {scenes.num_scenes}"
    elif scenes.canvas < 8:
        bad = f"'{key}.canvas' must be >= 8 pixels, got {scenes.canvas}"
    elif len(scenes.items) != 2 or not 1 <= scenes.items[0] <= scenes.items[1]:
        bad = f"'{key}.items' must be [low, high] with 1 <= low <= high, got {scenes.items}"
    elif len(scenes.item_size) != 2 or not 4 <= scenes.item_size[0] <= scenes.item_size[1] <= scenes.canvas:
        bad = f"'{key}.item_size' must be [low, high] with 4 <= low <= high <= canvas ({scenes.canvas}), got {scenes.item_size}"
    elif not 0 <= scenes.max_overlap <= 1:
        bad = f"'{key}.max_overlap' must be in [0, 1], got {scenes.max_overlap}"
    elif scenes.clutter < 0 or not 0 <= scenes.clutter_contrast <= 1:
        bad = f"'{key}.clutter' must be >= 0 and '{key}.clutter_contrast' in [0, 1], got {scenes.clutter} and {scenes.clutter_contrast}"
    elif scenes.clutter and scenes.canvas < 16:
        bad = f"'{key}.clutter' needs '{key}.canvas' >= 16 (clutter patches are up to 16 px), got {scenes.canvas}"
    elif scenes.background not in BACKGROUNDS:
        bad = f"'{key}.background' is '{scenes.background}'; choose one of {', '.join(BACKGROUNDS)}"
    elif error := (_range_error(f"{key}.background_level", scenes.background_level, 0, 1)
                   or _range_error(f"{key}.background_contrast", scenes.background_contrast, 0, 1)
                   or _range_error(f"{key}.background_period", scenes.background_period, 2, float("inf"))):
        bad = error
    elif scenes.captions not in CAPTION_KINDS:
        bad = f"'{key}.captions' is '{scenes.captions}'; choose one of {', '.join(CAPTION_KINDS)}"
    elif not 0 <= scenes.single_fraction <= 1:
        bad = f"'{key}.single_fraction' must be in [0, 1], got {scenes.single_fraction}"
    elif scenes.pool_limit is not None and scenes.pool_limit < 1:
        bad = f"'{key}.pool_limit' must be a positive number of images, got {scenes.pool_limit}"
    if bad:
        raise AnnobootError(f"bad config: key {bad}")


CHUNK = 1024  # scenes per random stream: makes scene i independent of the number of scenes
_SPLIT_CODE = {"train": 0, "test": 1}
_PLACEMENT_TRIES = 16  # candidate positions per item; the first within max_overlap wins
_CLUTTER_SIDE = (8, 16)  # clutter patches: square cuts of an item, side in px (inclusive)
# Pasted items are blended with alpha = min(1, pixel / _OPAQUE): their dark surround lets the
# background show through, their body (pixels >= _OPAQUE) replaces it exactly.
_OPAQUE = 48.0


@dataclass
class SceneSet:
    """Generated scenes, all on CPU.

    images: (N, 1, H, W) uint8 canvases.
    item_scene: (M,) int64 scene of each item, ascending; items of a scene in paste order
        (a later item lies over an earlier one).
    item_boxes: (M, 4) float32 normalised xyxy of the square each item was pasted into.
    item_labels: (M,) int64 Fashion-MNIST class of each item.
    item_indices: (M,) int64 index of each item in its pool (the Fashion-MNIST split).
    clutter_scene, clutter_indices: (Q,) int64 scene and pool index of each clutter patch.
    captions: N strings; named_classes: N sorted lists of the class ids each caption names.
    """

    images: torch.Tensor
    item_scene: torch.Tensor
    item_boxes: torch.Tensor
    item_labels: torch.Tensor
    item_indices: torch.Tensor
    clutter_scene: torch.Tensor
    clutter_indices: torch.Tensor
    captions: List[str]
    named_classes: List[List[int]]


def resize_items(images: torch.Tensor, side: int) -> torch.Tensor:
    """(n, h, w) uint8 -> (n, side, side) uint8, bilinear with antialiasing when shrinking."""
    if images.shape[0] == 0:
        return images.new_zeros((0, side, side))
    resized = F.interpolate(
        images[:, None].float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[:, 0].round_().clamp_(0, 255).to(torch.uint8)


def _region_index(scene: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, side: int):
    """Advanced-index triple addressing the (n, side, side) squares at (y0, x0) of n scenes."""
    steps = torch.arange(side)
    rows = (y0[:, None] + steps)[:, :, None]
    cols = (x0[:, None] + steps)[:, None, :]
    return scene[:, None, None], rows, cols


def _place_items(
    rng: np.random.Generator, sides: np.ndarray, present: np.ndarray, canvas: int, max_overlap: float
) -> np.ndarray:
    """Top-left corners (n, K, 2) as (x, y): each item tries a few positions and keeps the first
    whose box shares at most ``max_overlap`` of the smaller box with every earlier item, else
    the try with the least overlap."""
    n, k_max = sides.shape
    corners = np.zeros((n, k_max, 2), dtype=np.int64)
    for k in range(k_max):
        side = sides[:, k]
        high = (canvas - side + 1)[:, None]
        xs = rng.integers(0, high, size=(n, _PLACEMENT_TRIES))
        ys = rng.integers(0, high, size=(n, _PLACEMENT_TRIES))
        if k == 0:
            choice = np.zeros(n, dtype=np.int64)
        else:
            prev_side = sides[:, :k, None]  # (n, k, 1) against (n, 1, T) candidates
            px, py = corners[:, :k, 0, None], corners[:, :k, 1, None]
            cx, cy, cs = xs[:, None, :], ys[:, None, :], side[:, None, None]
            ix = np.clip(np.minimum(px + prev_side, cx + cs) - np.maximum(px, cx), 0, None)
            iy = np.clip(np.minimum(py + prev_side, cy + cs) - np.maximum(py, cy), 0, None)
            share = ix * iy / np.minimum(prev_side, cs) ** 2
            share = np.where(present[:, :k, None], share, 0.0).max(axis=1)  # (n, T)
            fits = share <= max_overlap
            choice = np.where(fits.any(axis=1), fits.argmax(axis=1), share.argmin(axis=1))
        rows = np.arange(n)
        corners[:, k, 0] = xs[rows, choice]
        corners[:, k, 1] = ys[rows, choice]
    return corners


_PLAID_COMPONENTS = 3


def scene_backgrounds(rng: np.random.Generator, cfg: SceneGeneratorOptions, num: int = CHUNK) -> torch.Tensor:
    """(num, canvas, canvas) uint8 backgrounds of the first ``num`` scenes of a chunk, drawn
    from ``rng`` alone: the draws are the whole chunk's, so a prefix is the same whatever ``num``.

    grating: level + contrast * sin(2 pi (x cos t + y sin t) / period + phase), with level,
    contrast, period (all uniform in their ranges), orientation t and phase uniform per scene;
    plaid: the sum of three such sinusoids of the scene's level, each a third of its contrast.
    none: black. Clipped to [0, 255].
    """
    side = cfg.canvas
    if cfg.background == "none":
        return torch.zeros((num, side, side), dtype=torch.uint8)
    components = _PLAID_COMPONENTS if cfg.background == "plaid" else 1
    level = rng.uniform(*cfg.background_level, size=(CHUNK, 1, 1))[:num]
    contrast = rng.uniform(*cfg.background_contrast, size=(CHUNK, 1, 1))[:num] / components
    coords = np.arange(side, dtype=np.float64) + 0.5
    value = np.repeat(level, side, axis=1).repeat(side, axis=2)
    for _ in range(components):
        angle = rng.uniform(0, math.pi, size=(CHUNK, 1, 1))[:num]
        period = rng.uniform(*cfg.background_period, size=(CHUNK, 1, 1))[:num]
        phase = rng.uniform(0, 2 * math.pi, size=(CHUNK, 1, 1))[:num]
        along = coords[None, None, :] * np.cos(angle) + coords[None, :, None] * np.sin(angle)
        value = value + contrast * np.sin(2 * math.pi * along / period + phase)
    return torch.from_numpy(np.clip(np.round(value * 255), 0, 255).astype(np.uint8))


def _generate_chunk(
    pool_images: torch.Tensor, pool_labels: torch.Tensor, cfg: SceneGeneratorOptions, split: str, chunk: int, num: int
) -> SceneSet:
    # Three streams: layout, captions, background (the third leaves the first two, and so
    # scenes without a background, as they were before backgrounds existed).
    streams = np.random.SeedSequence([cfg.seed, _SPLIT_CODE[split], chunk]).spawn(3)
    rng = np.random.default_rng(streams[0])
    caption_rng = random.Random(int(streams[1].generate_state(1)[0]))
    canvas, pool_size = cfg.canvas, pool_images.shape[0]
    k_max = cfg.items[1]

    # Layout: draws for a whole chunk and every slot (so a shorter last chunk is a prefix of a
    # full one), used where the scene exists and has that many items.
    num_items = rng.integers(cfg.items[0], cfg.items[1] + 1, size=CHUNK)
    single = rng.random(CHUNK) < cfg.single_fraction
    num_items[single] = 1
    sides = rng.integers(cfg.item_size[0], cfg.item_size[1] + 1, size=(CHUNK, k_max))
    sides[single, 0] = canvas  # a single item fills its canvas: an object-centric image
    item_pool = rng.integers(0, pool_size, size=(CHUNK, k_max))
    present = np.arange(k_max)[None, :] < num_items[:, None]
    corners = _place_items(rng, sides, present, canvas, cfg.max_overlap)  # a canvas-wide item sits at (0, 0)

    c_max = cfg.clutter
    num_clutter = np.where(single, 0, rng.integers(0, c_max + 1, size=CHUNK))
    c_side = rng.integers(_CLUTTER_SIDE[0], _CLUTTER_SIDE[1] + 1, size=(CHUNK, c_max))
    c_pool = rng.integers(0, pool_size, size=(CHUNK, c_max))
    c_src_y = rng.integers(0, 28 - c_side + 1)  # where the patch is cut from its 28x28 item
    c_src_x = rng.integers(0, 28 - c_side + 1)
    c_dst_y = rng.integers(0, canvas - c_side + 1)
    c_dst_x = rng.integers(0, canvas - c_side + 1)
    c_present = np.arange(c_max)[None, :] < num_clutter[:, None]

    num_items, single, sides, item_pool, present, corners = (
        a[:num] for a in (num_items, single, sides, item_pool, present, corners))
    num_clutter, c_side, c_pool, c_src_y, c_src_x, c_dst_y, c_dst_x, c_present = (
        a[:num] for a in (num_clutter, c_side, c_pool, c_src_y, c_src_x, c_dst_y, c_dst_x, c_present))

    images = scene_backgrounds(np.random.default_rng(streams[2]), cfg, num)
    images[torch.from_numpy(single)] = 0  # a single item stands for the items source: on black
    # Clutter first, max-composited at low contrast: faint texture, no clean object.
    for j in range(c_max):
        for side in np.unique(c_side[c_present[:, j], j]):
            scenes = np.nonzero(c_present[:, j] & (c_side[:, j] == side))[0]
            pool_at, src_y, src_x, dst_y, dst_x = (
                torch.from_numpy(a[scenes, j]) for a in (c_pool, c_src_y, c_src_x, c_dst_y, c_dst_x)
            )
            patch = pool_images[pool_at][_region_index(torch.arange(len(scenes)), src_y, src_x, int(side))]
            patch = (patch.float() * cfg.clutter_contrast).round_().to(torch.uint8)
            where = _region_index(torch.from_numpy(scenes), dst_y, dst_x, int(side))
            images[where] = torch.maximum(images[where], patch)
    # Items in layer order, so a later item lies over an earlier one.
    for k in range(k_max):
        for side in np.unique(sides[present[:, k], k]):
            scenes = np.nonzero(present[:, k] & (sides[:, k] == side))[0]
            item = resize_items(pool_images[torch.from_numpy(item_pool[scenes, k])], int(side)).float()
            y0, x0 = torch.from_numpy(corners[scenes, k, 1]), torch.from_numpy(corners[scenes, k, 0])
            where = _region_index(torch.from_numpy(scenes), y0, x0, int(side))
            alpha = (item / _OPAQUE).clamp_(max=1.0)
            images[where] = (alpha * item + (1 - alpha) * images[where].float()).round_().to(torch.uint8)

    scene_of, slot_of = np.nonzero(present)  # scene-major, slots in paste order
    x0, y0, side = corners[scene_of, slot_of, 0], corners[scene_of, slot_of, 1], sides[scene_of, slot_of]
    boxes = np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.float32) / canvas
    indices = item_pool[scene_of, slot_of]
    labels = pool_labels[torch.from_numpy(indices)]
    clutter_scene, clutter_slot = np.nonzero(c_present)

    captions, named = [], []
    per_scene = labels.split(num_items.tolist())
    caption_of = CAPTION_KINDS[cfg.captions]
    for scene_labels in per_scene:
        text, classes = caption_of(scene_labels.tolist(), caption_rng)
        captions.append(text)
        named.append(classes)
    return SceneSet(
        images=images[:, None],
        item_scene=torch.from_numpy(scene_of.astype(np.int64)),
        item_boxes=torch.from_numpy(boxes),
        item_labels=labels,
        item_indices=torch.from_numpy(indices.astype(np.int64)),
        clutter_scene=torch.from_numpy(clutter_scene.astype(np.int64)),
        clutter_indices=torch.from_numpy(c_pool[clutter_scene, clutter_slot].astype(np.int64)),
        captions=captions,
        named_classes=named,
    )


def generate_scenes(
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    cfg: SceneGeneratorOptions,
    split: str,
    num_scenes: Optional[int] = None,
) -> SceneSet:
    """The first ``num_scenes`` (default ``cfg.num_scenes``) scenes of ``split`` from one pool.

    pool_images: (P, 28, 28) or (P, 1, 28, 28) uint8 items, all of ``split``; pool_labels: (P,).
    Items and clutter are drawn from this pool only (with replacement).
    """
    check_scenes(cfg)
    cfg = cfg.resolved()
    if split not in _SPLIT_CODE:
        raise AnnobootError(f"scene split '{split}' does not exist; choose one of {', '.join(_SPLIT_CODE)}")
    if pool_images.ndim == 4:
        pool_images = pool_images[:, 0]
    if pool_images.ndim != 3 or pool_images.shape[1:] != (28, 28) or pool_images.dtype != torch.uint8:
        raise AnnobootError(
            f"scene pool must be (P, 28, 28) uint8 Fashion-MNIST items, "
            f"got {tuple(pool_images.shape)} {pool_images.dtype}"
        )
    if pool_images.shape[0] == 0 or pool_labels.shape != (pool_images.shape[0],):
        raise AnnobootError(
            f"scene pool needs one label per item and at least one item, got {pool_images.shape[0]} items "
            f"and labels of shape {tuple(pool_labels.shape)}"
        )
    total = cfg.num_scenes if num_scenes is None else num_scenes
    chunks = []
    for chunk, start in enumerate(range(0, total, CHUNK)):
        chunks.append(_generate_chunk(pool_images, pool_labels.long(), cfg, split, chunk, min(CHUNK, total - start)))
    offsets = np.cumsum([0] + [c.images.shape[0] for c in chunks])
    return SceneSet(
        images=torch.cat([c.images for c in chunks]),
        item_scene=torch.cat([c.item_scene + int(o) for c, o in zip(chunks, offsets)]),
        item_boxes=torch.cat([c.item_boxes for c in chunks]),
        item_labels=torch.cat([c.item_labels for c in chunks]),
        item_indices=torch.cat([c.item_indices for c in chunks]),
        clutter_scene=torch.cat([c.clutter_scene + int(o) for c, o in zip(chunks, offsets)]),
        clutter_indices=torch.cat([c.clutter_indices for c in chunks]),
        captions=[text for c in chunks for text in c.captions],
        named_classes=[named for c in chunks for named in c.named_classes],
    )


__all__ = ["BACKGROUNDS", "CHUNK", "SCENE_PRESETS", "SceneSet", "SceneGeneratorOptions", "check_scenes", "generate_scenes",
           "resize_items", "scene_backgrounds"]
