"""Image encoders: any timm backbone, returning its tokens and a pooled vector.

A ViT returns its patch tokens (prefix tokens such as [CLS] dropped) and its own pooled
output; a CNN returns its last feature map flattened into tokens and its global pool. The
value decoder and the MAP probe read the tokens; kNN and the linear probe read the pooled vector.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Dict

import timm
import torch
from torch import nn

from annoboot.errors import AnnobootError


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # (B, T, D)
    pooled: torch.Tensor  # (B, D)


def create_backbone(name: str, img_size: int, backbone_kwargs: Dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised timm model without classifier (nothing is downloaded)."""
    return _create(name, img_size, backbone_kwargs)[0]


def _create(name: str, img_size: int, backbone_kwargs: Dict[str, Any] | None) -> tuple[nn.Module, Dict[str, Any]]:
    """The timm model and the keyword arguments that built it (``img_size`` only where taken)."""
    kwargs = dict(backbone_kwargs or {})
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        hint = f"; similar names: {', '.join(close)}" if close else "; `timm.list_models('*vit*')` lists the names"
        raise AnnobootError(f"unknown timm backbone '{name}' (model.backbone){hint}")
    kwargs.setdefault("img_size", img_size)
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs), kwargs
    except TypeError as exc:
        # CNNs take no image size: retry without it, unless the user set it.
        if "img_size" not in str(exc) or "img_size" in (backbone_kwargs or {}):
            raise AnnobootError(f"model.backbone_kwargs {kwargs} do not fit timm model '{name}': {exc}") from None
    kwargs.pop("img_size")
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs), kwargs
    except TypeError as exc:
        raise AnnobootError(f"model.backbone_kwargs {kwargs} do not fit timm model '{name}': {exc}") from None


class Encoder(nn.Module):
    """Wraps a timm backbone; ``forward(images) -> EncoderOutput``.

    images: (B, 3, S, S) normalised. ``width`` is the token/pooled dimension.
    ``backbone_name`` and ``create_kwargs`` rebuild the same timm model (used by export).
    """

    def __init__(self, backbone: nn.Module, backbone_name: str = "", create_kwargs: Dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.create_kwargs = dict(create_kwargs or {})
        self.width: int = backbone.num_features
        self.num_prefix_tokens: int = getattr(backbone, "num_prefix_tokens", 0)
        # CPU bf16 autocast is kept to encoders with at most one convolution (a ViT's patch
        # embedding): oneDNN's bf16 weight gradient of a strided 3x3 convolution over a 1x1
        # channels-last map comes out about 1e5 times too large (torch 2.14.1), which sent DINO
        # on a ResNet to inf in its second step. CNNs run in float32 on the CPU.
        self.bf16_on_cpu = sum(isinstance(m, nn.Conv2d) for m in backbone.modules()) <= 1

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        if images.device.type == "cpu" and not self.bf16_on_cpu and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self._forward(images.float())
        return self._forward(images)

    def _forward(self, images: torch.Tensor) -> EncoderOutput:
        features = self.backbone.forward_features(images)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        if features.ndim == 4:  # CNN feature map (B, C, h, w)
            tokens = features.flatten(2).transpose(1, 2)
        else:
            tokens = features[:, self.num_prefix_tokens :]
        return EncoderOutput(tokens=tokens, pooled=pooled)


def rebuild_backbone(encoder: Encoder, **extra_kwargs: Any) -> nn.Module:
    """A twin of ``encoder``'s timm backbone built with ``extra_kwargs`` added (e.g.
    ``dynamic_img_size=True``), holding the same weights, on the same device, in the same mode."""
    kwargs = {**encoder.create_kwargs, **extra_kwargs}
    backbone = timm.create_model(encoder.backbone_name, pretrained=False, num_classes=0, **kwargs)
    backbone.load_state_dict(encoder.backbone.state_dict())
    reference = next(encoder.backbone.parameters())
    return backbone.to(reference.device, reference.dtype).train(encoder.backbone.training)


def check_patch_multiple(encoder: Encoder, key: str, side: int) -> None:
    """Refuse a view side that a patch-embedding backbone cannot tile (``key`` names the option)."""
    patch = getattr(getattr(encoder.backbone, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if patch and side % patch:
        raise AnnobootError(f"bad config: key '{key}' is {side}, which is not a multiple of the backbone's patch size "
                            f"{patch} ({encoder.backbone_name})")


def build_encoder(name: str, img_size: int, backbone_kwargs: Dict[str, Any] | None = None) -> Encoder:
    backbone, kwargs = _create(name, img_size, backbone_kwargs)
    return Encoder(backbone, name, kwargs)


def build_resizable_encoder(name: str, img_size: int, backbone_kwargs: Dict[str, Any] | None = None) -> Encoder:
    """An encoder that takes views of more than one size (multi-crop, larger source views).

    A timm ViT's position embeddings fit one token grid; ``dynamic_img_size`` interpolates them
    for other grids (at ``img_size`` nothing changes). Models without that option (CNNs) take
    any size as they are.
    """
    encoder = build_encoder(name, img_size, backbone_kwargs)
    if hasattr(encoder.backbone, "dynamic_img_size") and not encoder.backbone.dynamic_img_size:
        encoder = build_encoder(name, img_size, {**(backbone_kwargs or {}), "dynamic_img_size": True})
    return encoder
