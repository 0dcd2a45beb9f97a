"""DINO's projection head: an MLP to an L2-normalised bottleneck, then K prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """(B, in_dim) features -> (B, num_prototypes) prototype logits.

    Linear -> GELU -> Linear -> GELU -> Linear to ``bottleneck_dim``, L2-normalised, then
    ``last_layer``: a weight-normalised linear map onto the prototypes whose per-prototype
    magnitude is fixed to 1 (DINO's ``norm_last_layer``), so each logit is a cosine similarity
    to a unit prototype. ``last_layer`` is exposed so its gradient can be dropped while frozen.
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, num_prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, num_prototypes, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0  # g: (K, 1)
        with torch.no_grad():
            magnitude.fill_(1.0)
        # Fixed magnitudes keep training stable (DINO's default); the directions still learn.
        magnitude.requires_grad_(False)

    def bottleneck(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, bottleneck_dim) float32, L2-normalised."""
        return F.normalize(self.mlp(features).float(), dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: the logits are divided by temperatures as low as 0.04.
        bottleneck = self.bottleneck(features)
        with torch.autocast(bottleneck.device.type, enabled=False):
            return self.last_layer(bottleneck)
