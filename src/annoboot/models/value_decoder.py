"""The value decoder: Q(x, a, .) from a source view's tokens and a batch of moves.

Each move (a relative box, see ``annoboot.actions``) becomes 4 query tokens: a bin embedding
of each quantised coordinate plus a coordinate-index embedding. Queries cross-attend to the
source view's encoder tokens; among themselves they attend only within their own box
(block-diagonal mask), so K boxes share one decoder call yet get the same outputs as K
separate calls. Each box's 4 outputs are averaged into one vector, projected to ``out_dim``.
"""

from __future__ import annotations

import torch
from torch import nn


def block_diagonal_mask(num_boxes: int, tokens_per_box: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(K*4, K*4) bool attention mask, True where attention is *blocked* (torch's convention)."""
    box_of_token = torch.arange(num_boxes, device=device).repeat_interleave(tokens_per_box)
    return box_of_token[:, None] != box_of_token[None, :]


class ValueDecoder(nn.Module):
    """forward(source_tokens (S, T, D_enc), move_tokens (S, K, 4) int64) -> (S, K, out_dim)."""

    tokens_per_box = 4

    def __init__(
        self,
        token_width: int,
        width: int,
        depth: int,
        num_heads: int,
        num_bins: int,
        out_dim: int,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"decoder width {width} is not divisible by decoder_heads {num_heads}")
        self.bin_embed = nn.Embedding(num_bins, width)
        self.coord_embed = nn.Parameter(torch.zeros(self.tokens_per_box, width))
        nn.init.trunc_normal_(self.coord_embed, std=0.02)
        nn.init.trunc_normal_(self.bin_embed.weight, std=0.02)
        self.memory_proj = nn.Sequential(nn.LayerNorm(token_width), nn.Linear(token_width, width))
        layer = nn.TransformerDecoderLayer(
            d_model=width,
            nhead=num_heads,
            dim_feedforward=int(width * mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerDecoder(layer, num_layers=depth, norm=nn.LayerNorm(width))
        self.head = nn.Linear(width, out_dim)

    def forward(self, source_tokens: torch.Tensor, move_tokens: torch.Tensor) -> torch.Tensor:
        num_sources, num_boxes, _ = move_tokens.shape
        queries = self.bin_embed(move_tokens) + self.coord_embed  # (S, K, 4, W)
        queries = queries.flatten(1, 2)  # (S, K*4, W)
        mask = block_diagonal_mask(num_boxes, self.tokens_per_box, queries.device)
        memory = self.memory_proj(source_tokens)
        out = self.blocks(queries, memory, tgt_mask=mask)
        out = out.view(num_sources, num_boxes, self.tokens_per_box, -1).mean(2)
        return self.head(out)
