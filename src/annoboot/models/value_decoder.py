"""The value decoder: Q(x, a, .) from a source view's tokens and a batch of moves.

Each move (a relative box, see ``annoboot.actions``) becomes 4 query tokens: a bin embedding
of each quantised coordinate plus a coordinate-index embedding. In every layer a box's 4 tokens
attend to each other (never to another box's), then cross-attend to the source view's encoder
tokens, then pass an MLP (pre-norm residual blocks). Because boxes never see each other, K boxes
share one decoder call yet get the same outputs as K separate calls; self-attention runs on
groups of 4 tokens, so no (4K x 4K) mask is built. Each box's 4 outputs are averaged into one
vector, projected to ``out_dim``. An optional memory mask limits what each box reads: with
``model.decoder_attention=target_box`` a move reads only the source tokens inside the region it
moves to (``annoboot.methods.bootstrapping.ValueFunction``). ``RegionMeanReadout`` is the
decoder-free alternative (``model.value_readout=region_mean``): one linear map of the mean of the
tokens in a move's region.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, Lq, W) over a memory (B, Lk, W) -> (B, Lq, W).

    ``fused_attn`` chooses PyTorch's fused kernel or the explicit softmax(q k^T / sqrt(d)) v,
    the same switch timm's attention modules have (see ``annoboot.runtime``).
    """

    fused_attn: bool = True

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"decoder width {width} is not divisible by decoder_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor,
                memory_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """memory_mask: None (every query reads the whole memory) or (B, Lq, Lk) bool, True where
        a query may read a memory token; every row needs at least one True."""
        batch, num_queries, width = queries.shape
        # One memory per row of queries: a memory of another batch size would be reshaped into
        # rows of the wrong length (one source's tokens split over three sources) without error.
        if memory.shape[0] != batch:
            raise ValueError(f"cross-attention needs one memory per row of queries: {batch} query rows "
                             f"(sources of moves) but memory for {memory.shape[0]} (source views' tokens)")
        q = self.q(queries).view(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(memory).view(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None if memory_mask is None else memory_mask[:, None]  # the same for every head
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            weights = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                weights = weights.masked_fill(~mask, float("-inf"))
            out = weights.float().softmax(-1).to(v.dtype) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, num_queries, width))


class DecoderBlock(nn.Module):
    """Pre-norm: attention within each box, cross-attention to the memory, MLP; all residual."""

    def __init__(self, width: int, num_heads: int, tokens_per_box: int, mlp_ratio: float):
        super().__init__()
        self.tokens_per_box = tokens_per_box
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = Attention(width, num_heads, qkv_bias=True)
        self.norm_cross = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, num_heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=nn.GELU)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor,
                memory_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        sources, length, width = queries.shape
        boxes = self.norm_self(queries).view(-1, self.tokens_per_box, width)  # one row per box
        queries = queries + self.self_attn(boxes).view(sources, length, width)
        queries = queries + self.cross_attn(self.norm_cross(queries), memory, memory_mask)
        return queries + self.mlp(self.norm_mlp(queries))


class ValueDecoder(nn.Module):
    """forward(source_tokens (S, T, D_enc), move_tokens (S, K, 4) int64, memory_mask (S, K, T)
    bool or None) -> (S, K, out_dim)."""

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
        self.blocks = nn.ModuleList(DecoderBlock(width, num_heads, self.tokens_per_box, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)

    def forward(self, source_tokens: torch.Tensor, move_tokens: torch.Tensor,
                memory_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        num_sources, num_boxes, _ = move_tokens.shape
        queries = self.bin_embed(move_tokens) + self.coord_embed  # (S, K, 4, W)
        queries = queries.flatten(1, 2)  # (S, K*4, W)
        memory = self.memory_proj(source_tokens)
        if memory_mask is not None:  # a box's mask for each of its 4 tokens
            memory_mask = memory_mask.repeat_interleave(self.tokens_per_box, dim=1)
        for block in self.blocks:
            queries = block(queries, memory, memory_mask)
        out = self.norm(queries).view(num_sources, num_boxes, self.tokens_per_box, -1).mean(2)
        return self.head(out)


class RegionMeanReadout(nn.Module):
    """phi_AB without a decoder: a layer norm and one linear map of the mean of the source tokens
    in each move's region. forward(source_tokens (S, T, D_enc), move_tokens (S, K, 4),
    memory_mask (S, K, T) bool) -> (S, K, out_dim); the move tokens are read only through the mask.

    No query and no attention, so Q can tell the annotations at a target apart only by what the
    pooled tokens of that region carry, linearly: the features the in-context linear probe (b')
    reads from a box, and the step's gradient reaches exactly those tokens.
    """

    def __init__(self, token_width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(token_width)
        self.head = nn.Linear(token_width, out_dim)

    def forward(self, source_tokens: torch.Tensor, move_tokens: torch.Tensor,
                memory_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if memory_mask is None:
            raise ValueError("the region-mean readout needs each move's region mask (S, K, T)")
        weights = memory_mask.to(source_tokens.dtype)  # every row marks at least one token
        pooled = (weights @ source_tokens) / weights.sum(-1, keepdim=True)
        return self.head(self.norm(pooled))
