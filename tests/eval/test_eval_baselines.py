"""annoboot.eval.baselines: the pixel floor."""

from __future__ import annotations

import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)

from annoboot.views import Normalize


def test_the_pixel_floor_reads_raw_pixels_and_their_patches():
    from annoboot.eval.baselines import PixelEncoder

    pixels = torch.rand(2, 3, 16, 16)
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    out = PixelEncoder([0.5] * 3, [0.25] * 3, patch=8)(normalize(pixels))
    assert torch.allclose(out.pooled, pixels.flatten(1), atol=1e-6)  # the normalisation undone
    assert out.tokens.shape == (2, 4, 3 * 8 * 8)
    assert torch.allclose(out.tokens[0, 1], pixels[0, :, :8, 8:].flatten(), atol=1e-6)  # top-right block
