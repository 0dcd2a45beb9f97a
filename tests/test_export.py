"""annoboot.export: an exported backbone reloads in timm with the same features."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from helpers import (
    TINY_VIT,
    one_thread,  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)
)

from annoboot.export import export_backbone, load_snippet, metadata_path
from annoboot.models.encoder import build_encoder


@pytest.mark.parametrize(
    "name, kwargs, img_size",
    [(TINY_VIT[0], dict(TINY_VIT[1]), 32), ("resnet18", {}, 32)],
    ids=["vit", "resnet"],
)
def test_exported_backbone_reloads_in_timm_with_the_same_features(tmp_path, name, kwargs, img_size):
    torch.manual_seed(0)
    encoder = build_encoder(name, img_size, kwargs).eval()
    with torch.no_grad():  # move BatchNorm statistics off their defaults, so they must be saved
        encoder.backbone.train()
        encoder(torch.randn(8, 3, img_size, img_size))
        encoder.eval()

    path = export_backbone(encoder, tmp_path / "backbone", encoder.backbone_name, encoder.create_kwargs)
    assert path == tmp_path / "backbone.safetensors" and path.is_file()
    metadata = json.loads(metadata_path(path).read_text())
    assert metadata["backbone"] == name and metadata["create_kwargs"] == encoder.create_kwargs

    images = torch.randn(2, 3, img_size, img_size)
    snippet = load_snippet(path, name, metadata["create_kwargs"])
    assert "num_classes=0" in snippet
    namespace = {"images": images}
    exec(snippet, namespace)  # the snippet as printed to the user, run verbatim
    reloaded = namespace["model"].eval()
    assert isinstance(reloaded, torch.nn.Module)
    with torch.no_grad():
        expected = encoder(images).pooled
        torch.testing.assert_close(namespace["features"], expected)
        direct = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0, **encoder.create_kwargs
        ).eval()
        torch.testing.assert_close(direct(images), expected)
