"""Pictures of a run: training curves, bootstrap agreement by IoU, and value maps (``annoboot viz``).

Everything is drawn with matplotlib's Agg renderer onto bare ``Figure`` objects, so it works
without a display and leaves pyplot's global state alone.
"""

from __future__ import annotations

# Value maps are computed by eval/value_maps.py (re-exported here for drawing them); the command
# that draws a run's pictures is annoboot.commands.visualize_run.
from annoboot.eval.value_maps import (
    ANNOTATION_SETS,
    AnnotationSet,
    ValueMap,
    ViewedImage,
    annotation_keys,
    compute_value_map,
    grid_boxes,
    load_image,
    register_annotation_set,
    require_value_function,
    value_probabilities,
)
from annoboot.viz.curves import agreement_series, plot_agreement, plot_curves, read_metrics
from annoboot.viz.value_map import display_image, plot_value_map


__all__ = [
    "ANNOTATION_SETS",
    "AnnotationSet",
    "ValueMap",
    "ViewedImage",
    "agreement_series",
    "annotation_keys",
    "compute_value_map",
    "display_image",
    "grid_boxes",
    "load_image",
    "plot_agreement",
    "plot_curves",
    "plot_value_map",
    "read_metrics",
    "register_annotation_set",
    "require_value_function",
    "value_probabilities",
]
