"""Export a pre-trained backbone as a plain timm checkpoint, usable without annoboot.

Two layouts. A single file (:func:`export_backbone`): the timm backbone's own ``state_dict``
(no classifier) in safetensors, so ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=...), num_classes=0, **create_kwargs)`` rebuilds the exact
model; a JSON file beside it records the name, the keyword arguments and the input transform;
:func:`load_snippet` writes out the call. A folder in the model hub's layout
(:func:`export_folder`): ``model.safetensors``, ``config.json`` (timm's own writer: architecture,
``num_classes: 0``, model arguments and a ``pretrained_cfg`` with the input size, mean, std,
interpolation and crop) and a ``README.md`` model card, which
``timm.create_model("local-dir:FOLDER", pretrained=True)`` loads and
``timm.data.resolve_model_data_config`` reads the transform from, and which uploads to a hub as
it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import timm

from annoboot.checked_files import save_safetensors
from annoboot.errors import AnnobootError
from annoboot.models.encoder import Encoder

SUFFIX = ".safetensors"
WEIGHTS_FILE = "model.safetensors"  # the names timm and the model hub look for in a folder
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


def data_config(img_size: int, mean, std) -> Dict[str, Any]:
    """timm's data config for what the encoder was trained and probed on: the whole image
    resized (squashed, not cropped) to ``img_size`` square, bilinear, then normalised, as
    ``annoboot embed`` and the probes feed it."""
    return {"input_size": (3, int(img_size), int(img_size)), "mean": tuple(map(float, mean)),
            "std": tuple(map(float, std)), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash"}


def _write_weights(encoder: Encoder, path: Path, metadata: Dict[str, str]) -> None:
    # Private copies: contiguous, on CPU, and sharing no storage (safetensors refuses shared tensors).
    state = {
        key: value.detach().to("cpu", copy=True).contiguous() for key, value in encoder.backbone.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, path, metadata)  # with the tensors' checksum, checked when annoboot reads them
    # safetensors creates the file owner-only (0600); give it the mode any other file gets.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _kwargs_json(kwargs: Dict[str, Any]) -> str:
    try:
        return json.dumps(kwargs)
    except TypeError as exc:
        raise AnnobootError(f"export: backbone kwargs {kwargs} cannot be written as JSON: {exc}") from None


def export_folder(encoder: Encoder, folder: str | Path, data: Dict[str, Any], card: str, tag: str = "annoboot",
                  licence: Optional[str] = None) -> Path:
    """Write the backbone in the model hub's layout into ``folder``; returns the folder.

    ``data``: :func:`data_config` of the encoder's input; ``card``: the README.md text;
    ``tag``/``licence``: recorded in ``pretrained_cfg`` (in place of the defaults of timm's
    ImageNet weights for the same architecture, which these weights are not).
    """
    from timm.models._hub import save_config_for_hf  # timm's own writer of config.json

    name, kwargs = encoder.backbone_name, dict(encoder.create_kwargs)
    if not name:
        raise AnnobootError("export: the encoder does not record its timm backbone name")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AnnobootError(f"export: {folder} exists and is not a folder (give a new folder, or a .safetensors file name)")
    _write_weights(encoder, folder / WEIGHTS_FILE,
                   {"backbone": name, "create_kwargs": _kwargs_json(kwargs), "data_config": json.dumps(data)})
    config_path = folder / CONFIG_FILE
    save_config_for_hf(encoder.backbone, str(config_path), model_args=kwargs, data_config=dict(data))
    config = json.loads(config_path.read_text())
    pretrained = config.setdefault("pretrained_cfg", {})
    pretrained["tag"] = tag
    pretrained.pop("license", None)
    if licence:
        pretrained["license"] = licence
    pretrained["crop_mode"] = data.get("crop_mode", pretrained.get("crop_mode"))
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_FILE).write_text(card)
    return folder


def is_exported_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder :func:`export_folder` (or timm's hub writer) made: it holds
    config.json or model.safetensors (reading it names the one missing or damaged) and is not a
    run folder (config.yaml)."""
    path = Path(path)
    return (path.is_dir() and ((path / CONFIG_FILE).exists() or (path / WEIGHTS_FILE).exists())
            and not (path / "config.yaml").exists())


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
    "timm_version": ..., "load": the snippet of :func:`load_snippet`, ``input_convention``'s
    keys and, with them, "data_config" (:func:`data_config`, also in the file's metadata)}.
    """
    name = backbone_name or encoder.backbone_name
    kwargs = dict(encoder.create_kwargs if create_kwargs is None else create_kwargs)
    if not name:
        raise AnnobootError("export: the encoder does not record its timm backbone name; pass backbone_name=")
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    kwargs_json = _kwargs_json(kwargs)
    file_metadata = {"backbone": name, "create_kwargs": kwargs_json}
    if input_convention and "img_size" in input_convention:
        file_metadata["data_config"] = json.dumps(
            data_config(input_convention["img_size"], input_convention["mean"], input_convention["std"]))
    _write_weights(encoder, path, file_metadata)
    metadata = {
        "backbone": name,
        "create_kwargs": kwargs,
        "num_features": encoder.width,
        "timm_version": timm.__version__,
        "load": load_snippet(path, name, kwargs),
        **(input_convention or {}),
    }
    if "data_config" in file_metadata:  # the transform, as timm's resolve_data_config names it
        metadata["data_config"] = json.loads(file_metadata["data_config"])
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
