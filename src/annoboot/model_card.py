"""The model card (README.md) of an exported folder: what the encoder is, how it was trained,
what its probes reached and under which licence its training data came."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from annoboot import __version__
from annoboot.config import Config, SourceConfig
from annoboot.models.encoder import Encoder
from annoboot.tables import format_views


@dataclass(frozen=True)
class Licence:
    spdx: str  # the hub's licence field ("other" when not one known licence)
    text: str  # one line for the card


# The licences of the data sets annoboot reads by name (their Debian packages' copyright files).
KNOWN_LICENCES = {
    "fashion_mnist": Licence("mit", "MIT (Fashion-MNIST, Zalando Research; Debian dataset-fashion-mnist)"),
    "fmnist_scenes": Licence("mit", "MIT (scenes composed of Fashion-MNIST items, Zalando Research)"),
    "openclipart": Licence("cc0-1.0", "CC0 1.0, public domain (Openclipart; Debian openclipart-png)"),
    "tuxpaint": Licence("gpl-2.0", "GPL-2.0 (Tux Paint stamps; Debian tuxpaint-stamps-default)"),
}


def _source_licence(src: SourceConfig) -> Licence:
    return KNOWN_LICENCES.get(src.kind) or Licence(
        "other", f"the licence of your images ({src.kind} at {src.root}): not known to annoboot, state it before sharing")


def data_licence(cfg: Config) -> Licence:
    """The licence of the run's training data (annotation source, and bootstrap source if any)."""
    sources = [cfg.data.annotation] + ([cfg.data.bootstrap] if cfg.data.bootstrap is not None else [])
    licences = list(dict.fromkeys(_source_licence(src) for src in sources))
    if len(licences) == 1:
        return licences[0]
    return Licence("other", "; ".join(licence.text for licence in licences))


def _data(cfg: Config) -> str:
    def one(src: SourceConfig) -> str:
        where = f" at {src.root}" if src.root else ""
        return f"{src.kind} (split {src.split}{where}{f', first {src.limit}' if src.limit else ''})"

    text = one(cfg.data.annotation)
    if cfg.data.bootstrap is not None:
        text += f"; bootstrap views from {one(cfg.data.bootstrap)}"
    return text


def model_card(summary: Dict[str, Any], cfg: Config, weights: str, encoder: Encoder, licence: Licence) -> str:
    """README.md text. ``summary``: :func:`annoboot.compare.run_summary` of the run."""
    seconds = summary.get("train_seconds")
    facts = [
        ("model", f"timm `{encoder.backbone_name}` with {encoder.create_kwargs}, {encoder.width}-d pooled features, no classifier"),
        ("method", f"`{cfg.method.name}` (annoboot {__version__}), {weights} weights"),
        ("data", _data(cfg)),
        ("steps", str(summary.get("steps") or "not logged")),
        ("views seen", "not logged" if summary.get("views_seen") is None else format_views(summary["views_seen"])),
        ("wall time", "not logged" if seconds is None else f"{seconds / 60:.1f} min"),
        ("hardware", summary.get("hardware") or "not recorded"),
        ("input", f"the whole image resized to {cfg.views.img_size} x {cfg.views.img_size} (bilinear, not cropped), "
                  f"mean {list(cfg.views.mean)}, std {list(cfg.views.std)}"),
        ("seed", str(cfg.train.seed)),
    ]
    lines: List[str] = [
        "---", "library_name: timm", f"license: {licence.spdx}",
        "tags: [image-feature-extraction, timm, annoboot, self-supervised]", "---", "",
        f"# {encoder.backbone_name} pre-trained with annoboot `{cfg.method.name}`", "",
        "An image encoder pre-trained without labels by annoboot (annotation bootstrapping and the "
        "crop-consistency methods it builds on). It gives pooled features for retrieval, probes or fine-tuning.", "",
        "| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in facts), "",
        "## Use", "", "```python", "import timm", "from PIL import Image", "",
        'model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))",
        'features = model(transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0))  # (1, D)',
        "```", "", "With annoboot: `annoboot.load_encoder(PATH_TO_THIS_FOLDER).embed([...])` or "
        "`annoboot embed PATH_TO_THIS_FOLDER IMAGES --out emb.npz`.", "",
        *(["This is a caption model: `text_tower.safetensors` and `text_config.json` hold its text encoder (CLIP BPE "
           "tokenizer), so `annoboot.load_encoder(PATH_TO_THIS_FOLDER).embed_text([\"a red bag\"])`, "
           "`annoboot similar EMB --text \"a red bag\"` and `annoboot zero-shot PATH_TO_THIS_FOLDER IMAGES --labels a,b` "
           "work from the folder.", ""] if getattr(cfg.method, "name", "") in ("clip", "ab_clip") else []),
        "## Probe figures", "",
    ]
    figures = summary.get("figures") or {}
    if figures:
        command = summary.get("eval_command")
        lines.append(f"Frozen features, from the run's eval.json{f', measured by `{command}`' if command else ''} "
                     "(top-1 %; scene figures as named by `annoboot eval`):")
        lines += ["", "| probe | figure |", "|---|---:|", *(f"| {name} | {value:.2f} |" for name, value in figures.items())]
    else:
        lines.append(f"Not probed yet: `annoboot eval {summary.get('run', 'RUN')}` writes eval.json, then export again.")
    lines += ["", "## Training data licence", "", licence.text, ""]
    return "\n".join(lines)


__all__ = ["KNOWN_LICENCES", "Licence", "data_licence", "model_card"]
