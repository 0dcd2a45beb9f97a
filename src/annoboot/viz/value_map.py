"""Drawing value maps (computed by eval/value_maps.py): the map over the image, the annotation beside it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from annoboot.batch import ImageBatch
from annoboot.eval.value_maps import AnnotationSet


def plot_value_map(
    image: np.ndarray,
    probs: np.ndarray,
    boxes: np.ndarray,
    annotation: AnnotationSet,
    index: int,
    out: str | Path,
    title: str = "",
) -> Path:
    """Draw one annotation's value map over the image, with the annotation beside it.

    image: (H, W, 3) float in [0, 1]; probs: (G, G) Q(l | x, a) per grid box; boxes: (G, G, 4)
    the grid's boxes (normalised xyxy). Each cell of the heat map is centred on its box's centre;
    the box with the highest value is outlined.
    """
    height, width = image.shape[:2]
    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    ax_map, ax_ann = fig.subplots(1, 2, width_ratios=[1.25, 1])

    ax_map.imshow(image, extent=(0, width, height, 0), interpolation="nearest")
    # Each box's value fills the part of the image nearest to its centre (cells meet halfway
    # between centres; the outer ones reach the border), so the map covers the whole image.
    edges_x = _cell_edges((boxes[0, :, 0] + boxes[0, :, 2]) / 2) * width
    edges_y = _cell_edges((boxes[:, 0, 1] + boxes[:, 0, 3]) / 2) * height
    # Colours span the map's own range (the colour bar gives the values): small differences
    # between boxes stay visible even where the whole map is close to 1 / L.
    heat = ax_map.pcolormesh(edges_x, edges_y, probs, cmap="inferno", alpha=0.6, shading="flat",
                             vmin=float(probs.min()), vmax=max(float(probs.max()), float(probs.min()) + 1e-9))
    ax_map.set_xlim(0, width)
    ax_map.set_ylim(height, 0)
    i, j = np.unravel_index(int(np.argmax(probs)), probs.shape)
    x0, y0, x1, y1 = boxes[i, j] * np.array([width, height, width, height])
    ax_map.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", linewidth=1.5))
    if annotation.true_boxes is not None and not bool(torch.isnan(annotation.true_boxes[index]).any()):
        x0, y0, x1, y1 = annotation.true_boxes[index].numpy() * np.array([width, height, width, height])
        ax_map.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5,
                                   linestyle="--", label="true box"))
        ax_map.legend(handles=ax_map.patches[-1:], loc="lower right", fontsize="small")
    fig.colorbar(heat, ax=ax_map, shrink=0.85, label="Q(l | x, move to box)")
    ax_map.set_title(title or "value map", fontsize="medium")
    ax_map.set_xticks([])
    ax_map.set_yticks([])

    ax_ann.set_title(f"annotation l = {annotation.names[index]}", fontsize="medium")
    ax_ann.set_xticks([])
    ax_ann.set_yticks([])
    if annotation.images is not None:
        ax_ann.imshow(annotation.images[index], interpolation="nearest")
    else:
        text = annotation.texts[index] if annotation.texts is not None else annotation.names[index]
        ax_ann.axis("off")
        ax_ann.text(0.5, 0.5, textwrap.fill(text, 32), ha="center", va="center", wrap=True, fontsize="large")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)  # a bare Figure renders with Agg
    return out


def _cell_edges(centres: np.ndarray) -> np.ndarray:
    """Edges (in [0, 1]) of the cells around sorted box centres: halfway between neighbours, 0 and 1 outside."""
    return np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [1.0]])


def display_image(batch: ImageBatch) -> np.ndarray:
    """The first image of a batch as (H, W, 3) float in [0, 1], its valid region only."""
    pixels = batch.image(0).float().div(255).cpu()
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return pixels.permute(1, 2, 0).numpy()


__all__ = ["display_image", "plot_value_map"]
