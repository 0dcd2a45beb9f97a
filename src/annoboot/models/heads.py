"""Projection heads and learned logit scales."""

from __future__ import annotations

import math

import torch
from torch import nn


class Projector(nn.Module):
    """SimCLR-style MLP: Linear -> BatchNorm -> ReLU -> Linear. (B, in) -> (B, out)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LogitScale(nn.Module):
    """A learned inverse temperature t, stored as log t and capped (as in CLIP) for stability."""

    def __init__(self, init: float, max_value: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)))
        self.max_log = math.log(max_value)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()
