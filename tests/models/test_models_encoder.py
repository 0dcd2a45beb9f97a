"""annoboot.models.encoder: tokens and pooled features, backbone names, bf16 autocast."""

import pytest
import torch

from annoboot.errors import AnnobootError
from annoboot.models import build_encoder


@pytest.mark.parametrize(
    "name,kwargs,tokens",
    [("vit_tiny_patch16_224", {"patch_size": 8, "depth": 2}, 16), ("resnet18", {}, 1)],
)
def test_encoder_returns_tokens_and_pooled(name, kwargs, tokens):
    enc = build_encoder(name, 32, kwargs)
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, tokens, enc.width)
    assert out.pooled.shape == (2, enc.width)


def test_unknown_backbone_is_named():
    with pytest.raises(AnnobootError, match="vit_tinny"):
        build_encoder("vit_tinny_patch16", 32, {})


def test_cpu_bf16_autocast_reaches_vits_but_not_cnns():
    # oneDNN's bf16 weight gradient of a strided 3x3 convolution over a 1x1 channels-last map is
    # wrong by orders of magnitude (torch 2.14.1): CNN encoders stay in float32 on the CPU.
    images = torch.randn(2, 3, 32, 32)
    for name, kwargs, layer, dtype in [("vit_tiny_patch16_224", {"patch_size": 8, "depth": 1}, torch.nn.Linear, torch.bfloat16),
                                       ("resnet18", {}, torch.nn.Conv2d, torch.float32)]:
        encoder = build_encoder(name, 32, kwargs)
        seen = []
        next(m for m in encoder.modules() if isinstance(m, layer)).register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoder(images)
        assert seen == [dtype], name
