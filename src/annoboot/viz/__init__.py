"""Pictures of a run: training curves, bootstrap agreement by IoU, and value maps (``annoboot viz``).

Everything is drawn with matplotlib's Agg renderer onto bare ``Figure`` objects, so it works
without a display and leaves pyplot's global state alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np

from annoboot.errors import AnnobootError
from annoboot.viz.curves import agreement_series, plot_agreement, plot_curves, read_metrics
from annoboot.viz.value_map import (
    ANNOTATION_SETS,
    AnnotationSet,
    ValueMap,
    ViewedImage,
    annotation_keys,
    compute_value_map,
    display_image,
    grid_boxes,
    load_image,
    plot_value_map,
    register_annotation_set,
    require_value_function,
    value_probabilities,
)


def run_directory(run: str | Path) -> Path:
    """The run directory of a run directory or of one of its checkpoint files."""
    path = Path(run)
    if not path.exists():
        raise AnnobootError(f"run not found: {path} (give a run directory or a checkpoint file)")
    if path.is_file():
        path = path.parent
        if path.name == "checkpoints":
            path = path.parent
    return path


def visualize_run(
    run: str | Path,
    out: str | Path,
    image_index: int = 0,
    annotation: Optional[int] = None,
    grid: int = 8,
    box_scale: Optional[float] = None,
    weights: str = "online",
    overrides: Optional[List[str]] = None,
    curves_only: bool = False,
) -> List[Path]:
    """Write curves.png, agreement.png (runs that log agreement) and, for ab_* runs, value_map.png
    with its raw grid (value_map.npy, value_map.json) into ``out``; returns the paths written.

    The value map's image is ``image_index`` of the run's eval.test source.
    """
    from annoboot.data import build_source
    from annoboot.runs import load_run

    run_dir = run_directory(run)
    out = Path(out)
    method = None
    if not curves_only:
        cfg, method, device = load_run(run, weights, overrides)
        require_value_function(method)  # fail before drawing anything
    records = read_metrics(run_dir / "metrics.jsonl")
    written = [plot_curves(records, out / "curves.png", title=run_dir.name)]
    agreement = plot_agreement(records, out / "agreement.png", title=f"{run_dir.name}: bootstrap agreement by IoU")
    if agreement is not None:
        written.append(agreement)
    if method is None:
        return written

    source = build_source(cfg.eval.test)
    image = load_image(source, image_index, device)
    vmap = compute_value_map(method, source, image, annotation, grid, box_scale)
    name = vmap.annotations.names[vmap.chosen]
    about = f"image {image_index}" + (f" ({image.label_name})" if image.label_name else "")
    title = f"{cfg.method.name}, {weights} weights: {about}"
    written.append(plot_value_map(display_image(image.batch), vmap.grid, vmap.boxes.numpy(), vmap.annotations,
                                  vmap.chosen, out / "value_map.png", title))
    np.save(out / "value_map.npy", vmap.grid)
    written.append(out / "value_map.npy")
    meta = {
        "run": str(run),
        "weights": weights,
        "method": cfg.method.name,
        "image_source": source.name,
        "image_index": image_index,
        "image_label": image.label_name,
        "annotation_index": vmap.chosen,
        "annotation": name,
        "annotations": vmap.annotations.names,
        "grid": grid,
        "boxes_xyxy": vmap.boxes.tolist(),  # (G, G, 4), row i top to bottom, column j left to right
        "probability": vmap.grid.tolist(),  # (G, G): Q(annotation | whole image, move to box [i][j])
    }
    (out / "value_map.json").write_text(json.dumps(meta, indent=1))
    written.append(out / "value_map.json")
    return written


__all__ = [
    "ANNOTATION_SETS",
    "AnnotationSet",
    "ValueMap",
    "ViewedImage",
    "agreement_series",
    "annotation_keys",
    "compute_value_map",
    "grid_boxes",
    "load_image",
    "plot_agreement",
    "plot_curves",
    "plot_value_map",
    "read_metrics",
    "register_annotation_set",
    "require_value_function",
    "run_directory",
    "value_probabilities",
    "visualize_run",
]
