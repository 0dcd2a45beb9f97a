"""The floors every probe table carries: raw pixels, probed with the same code as an encoder.

A pre-trained encoder is only worth its cost where its frozen features beat the pixels it was
given. :class:`PixelEncoder` has the interface of :class:`~annoboot.models.encoder.Encoder`:
its pooled vector is the view's pixels in [0, 1] (the normalisation undone, so that cosine
similarity is that of the raw image, as in the Fashion-MNIST floors of docs/results.md) and its
tokens are the view's non-overlapping ``patch`` x ``patch`` pixel blocks (what a ViT's patch
embedding reads), so kNN, linear and MAP probes all have a pixel row.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from annoboot.models.encoder import EncoderOutput


class PixelEncoder(nn.Module):
    """forward(images (B, 3, S, S), normalised) -> tokens (B, (S/p)^2, 3 p^2), pooled (B, 3 S^2)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], patch: int = 8):
        super().__init__()
        self.patch = patch
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        pixels = images.float() * self.std + self.mean
        if pixels.shape[-1] % self.patch or pixels.shape[-2] % self.patch:
            raise ValueError(f"PixelEncoder: views of {tuple(pixels.shape[-2:])} px do not split into {self.patch}-px patches")
        patches = nn.functional.unfold(pixels, self.patch, stride=self.patch).transpose(1, 2)  # (B, T, 3 p^2)
        return EncoderOutput(tokens=patches, pooled=pixels.flatten(1))
