"""Export a pre-trained backbone as safetensors that plain timm loads.

The file holds the timm model's own state dict (no annoboot wrapper prefixes), so
``timm.create_model(name, pretrained=True, num_classes=0,
pretrained_cfg_overlay=dict(file=path), **create_kwargs)`` rebuilds the encoder. A JSON file
beside it records the name and the keyword arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from safetensors.torch import save_file

from annoboot.models.encoder import Encoder


def export_backbone(encoder: Encoder, path: str | Path, backbone_name: str, create_kwargs: Dict[str, Any]) -> Path:
    """Write ``encoder.backbone``'s weights to ``path`` (.safetensors) and ``<path>.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
    save_file(tensors, str(path), metadata={"backbone": backbone_name, "format": "timm"})
    meta = {"backbone": backbone_name, "create_kwargs": dict(create_kwargs)}
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2))
    return path


def load_snippet(path: str | Path, backbone_name: str, create_kwargs: Dict[str, Any]) -> str:
    """The timm call that loads an exported file (num_classes=0: no classifier was trained)."""
    args = "".join(f", {k}={v!r}" for k, v in create_kwargs.items())
    return (
        "import timm\n"
        f"model = timm.create_model({backbone_name!r}, pretrained=True, num_classes=0,\n"
        f"                          pretrained_cfg_overlay=dict(file={str(path)!r}){args})"
    )
