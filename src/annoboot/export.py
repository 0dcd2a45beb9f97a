"""Export a pre-trained backbone as a plain timm checkpoint, usable without annoboot.

The file is the timm backbone's own ``state_dict`` (no classifier) in safetensors, so
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...),
num_classes=0, **create_kwargs)`` rebuilds the exact model. A JSON file beside it records the
name and the keyword arguments; :func:`load_snippet` writes out the call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import timm
from safetensors.torch import save_file

from annoboot.errors import AnnobootError
from annoboot.models.encoder import Encoder

SUFFIX = ".safetensors"


def metadata_path(path: str | Path) -> Path:
    """``<path>.json``: where :func:`export_backbone` records how to rebuild the model."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_backbone(
    encoder: Encoder,
    path: str | Path,
    backbone_name: Optional[str] = None,
    create_kwargs: Optional[Dict[str, Any]] = None,
    input_convention: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``encoder.backbone``'s weights as timm-loadable safetensors; returns the file's path.

    Args:
        encoder: the encoder whose timm backbone is exported (weights copied to CPU).
        path: output file; ``.safetensors`` is appended when it has another suffix, because
            timm reads safetensors only from files named so.
        backbone_name: the timm model name (default ``encoder.backbone_name``).
        create_kwargs: keyword arguments that built the backbone, e.g. ``img_size``,
            ``patch_size`` (default ``encoder.create_kwargs``).

        input_convention: how inputs were made in training, e.g. {"img_size": 32, "mean": [...],
            "std": [...]}: recorded so that ``annoboot.load_encoder`` feeds the model alike.

    Also writes ``<path>.json``: {"backbone": name, "create_kwargs": {...}, "num_features": D,
    "timm_version": ..., "load": the snippet of :func:`load_snippet`, and ``input_convention``'s
    keys}.
    """
    name = backbone_name or encoder.backbone_name
    kwargs = dict(encoder.create_kwargs if create_kwargs is None else create_kwargs)
    if not name:
        raise AnnobootError("export: the encoder does not record its timm backbone name; pass backbone_name=")
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    try:
        kwargs_json = json.dumps(kwargs)
    except TypeError as exc:
        raise AnnobootError(f"export: backbone kwargs {kwargs} cannot be written as JSON: {exc}") from None

    # Private copies: contiguous, on CPU, and sharing no storage (safetensors refuses shared tensors).
    state = {
        key: value.detach().to("cpu", copy=True).contiguous() for key, value in encoder.backbone.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"backbone": name, "create_kwargs": kwargs_json})
    # safetensors creates the file owner-only (0600); give it the mode any other file gets.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    metadata = {
        "backbone": name,
        "create_kwargs": kwargs,
        "num_features": encoder.width,
        "timm_version": timm.__version__,
        "load": load_snippet(path, name, kwargs),
        **(input_convention or {}),
    }
    metadata_path(path).write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def load_snippet(path: str | Path, name: str, kwargs: Dict[str, Any]) -> str:
    """Python code that loads the exported backbone with timm alone.

    ``num_classes=0`` is required: the file holds no classifier, and timm loads it strictly
    into a model built with its default 1000-class head.
    """
    arguments = [
        repr(name),
        "pretrained=True",
        f"pretrained_cfg_overlay=dict(file={str(Path(path).resolve())!r})",
        "num_classes=0",
    ]
    arguments += [f"{key}={value!r}" for key, value in kwargs.items()]
    lines = ["import timm", "", "# num_classes=0 is required: the file holds the backbone without a classifier."]
    lines.append("model = timm.create_model(")
    lines += [f"    {argument}," for argument in arguments]
    lines.append(").eval()  # eval mode: BatchNorm uses its stored statistics")
    lines.append("features = model(images)  # (B, num_features) pooled features")
    return "\n".join(lines)
