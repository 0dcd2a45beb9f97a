"""Decoder probe: a small transformer decoder over frozen tokens, then a linear classifier.

The probe the annotation-bootstrapping paper reports next to linear and MAP (method.md, section
6): learned queries read the frozen encoder's tokens through a few decoder layers, so, like MAP,
it learns where to look, and with more than one layer it can also combine what it found. A CNN
encoder's last feature map serves as its tokens.

Each layer is pre-norm with residuals: self-attention over the queries, cross-attention from the
queries to the LayerNorm'd tokens, an MLP. The classifier reads the mean of the normalised query
outputs. As for the linear and MAP probes, one head per learning rate trains in the same pass
over the mini-batches and the val split picks the one reported.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from annoboot.errors import AnnobootError
from annoboot.eval.fitting import SINGLE_LABEL, check_probe_inputs, fit_and_select, seeded_heads
from annoboot.eval.map_probe import default_num_heads
from annoboot.eval.registry import register_probe, require_learning_rates
from annoboot.eval.token_sets import pack_token_sets, unpack_token_sets


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer over queries (B, Q, d) reading memory (B, T, d):

        q = q + SelfAttention(LN(q))
        q = q + CrossAttention(query=LN(q), keys=values=memory)
        q = q + MLP(LN(q))                                   # d -> mlp_ratio * d -> d, GELU
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.self_norm(queries)
        queries = queries + self.self_attention(x, x, x, need_weights=False)[0]
        x = self.cross_norm(queries)
        queries = queries + self.cross_attention(x, memory, memory, key_padding_mask=padding, need_weights=False)[0]
        return queries + self.mlp(self.mlp_norm(queries))


class DecoderHead(nn.Module):
    """Transformer-decoder classifier over a set of tokens.

    forward(tokens (B, T, D)) -> logits (B, C):
        memory = Project(LayerNorm(tokens))                  # (B, T, d); Project: D -> d, or none when d = D
        q = learned queries (Q, d), one set per example
        q = DecoderLayer_depth(... DecoderLayer_1(q, memory) ...)
        logits = Linear(mean over the Q queries of LayerNorm(q))

    Args:
        token_dim: token width D.
        num_classes: C.
        dim: decoder width d; None: D (no projection).
        depth: decoder layers.
        num_queries: Q learned queries.
        num_heads: attention heads; default :func:`~annoboot.eval.map_probe.default_num_heads` (d).
        mlp_ratio: hidden width of each MLP relative to d.
        masked: the input is a packed token set (B, T, D + 1) (eval/token_sets.py): the queries
            read the marked tokens only.
    """

    def __init__(
        self,
        token_dim: int,
        num_classes: int,
        dim: Optional[int] = None,
        depth: int = 2,
        num_queries: int = 1,
        num_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        masked: bool = False,
    ):
        super().__init__()
        self.masked = masked
        dim = token_dim if dim is None else dim
        if dim < 1 or depth < 1 or num_queries < 1:
            raise ValueError(f"DecoderHead: width {dim}, depth {depth} and {num_queries} queries must all be >= 1")
        num_heads = default_num_heads(dim) if num_heads is None else num_heads
        if dim % num_heads:
            raise ValueError(f"DecoderHead: {num_heads} heads do not divide the decoder width {dim}")
        self.token_norm = nn.LayerNorm(token_dim)
        self.project = nn.Identity() if dim == token_dim else nn.Linear(token_dim, dim)
        self.queries = nn.Parameter(torch.empty(1, num_queries, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.out_norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) tokens (or a packed (B, T, D + 1) set when ``masked``) -> (B, d) mean of the
        decoded queries, before the classifier."""
        padding = None
        if self.masked:
            tokens, padding = unpack_token_sets(tokens)
        memory = self.project(self.token_norm(tokens))
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            queries = layer(queries, memory, padding)
        return self.out_norm(queries).mean(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(tokens))


def decoder_width(dim: Optional[int], token_dim: int) -> int:
    """The width the probe decodes at: ``dim`` capped at the token width (projecting narrow
    tokens up would add cost, not information); None: the token width."""
    return token_dim if dim is None else min(dim, token_dim)


def decoder_probe(
    train_tokens: torch.Tensor,
    train_y: torch.Tensor,
    test_tokens: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    lrs: Sequence[float] = (3e-4, 1e-3),
    epochs: int = 5,
    depth: int = 2,
    num_queries: int = 1,
    dim: Optional[int] = 128,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_heads: Optional[int] = None,
    weight_decay: float = 0.0,
    progress: bool = False,
    task: Any = SINGLE_LABEL,
    train_valid: Optional[torch.Tensor] = None,
    test_valid: Optional[torch.Tensor] = None,
) -> Dict[str, object]:
    """Train one :class:`DecoderHead` per learning rate on frozen tokens; report the best.

    Runs as :func:`~annoboot.eval.map_probe.map_probe` does: tokens stay where they are (CPU,
    float16) and move to ``device`` as float32 one batch at a time; ``val_fraction`` of the
    train split (seeded) is held out to choose the learning rate; every head starts from the
    same seeded initialisation and sees the same batches (AdamW, cosine decay); evaluation is
    chunked. Deterministic for a seed on CPU.

    Args:
        train_tokens: (N, T, D), any float dtype; train_y: (N,) int64 in [0, num_classes).
        test_tokens: (M, T, D); test_y: (M,).
        num_classes: C.
        lrs: the learning-rate grid.
        epochs, batch_size: passes over the fit split and rows per step.
        depth, num_queries: decoder layers and learned queries.
        dim: decoder width, capped at D (:func:`decoder_width`); None: D. Narrower than D, the
            tokens are projected down first, which bounds the cost for wide encoders.
        val_fraction: share of the train split held out to choose the learning rate.
        seed: fixes the split, the initialisation and the batch order.
        device: where the heads train.
        num_heads: attention heads; default the largest of 8, 6, 4, 3, 2, 1 dividing the width.
        weight_decay: AdamW weight decay.
        progress: show a progress bar while the heads train.
        task: ``fitting.SINGLE_LABEL``, or ``multilabel.MULTI_LABEL`` with (N, C) multi-hot
            targets and C = num_classes (keys then "test_map", "test_f1", "val_map", ...).

    Returns:
        {"test_acc": %, "val_acc": %, "best_lr": float, "val_acc_by_lr": {"0.0003": %, ...}}.
    """
    check_probe_inputs(train_tokens, train_y, test_tokens, test_y, lrs)
    if train_tokens.ndim != 3:
        raise ValueError(f"decoder_probe: tokens must be (N, T, D), got {tuple(train_tokens.shape)}")
    device = torch.device(device)
    token_dim = train_tokens.shape[2]
    width = decoder_width(dim, token_dim)
    masked = train_valid is not None
    if masked:
        train_tokens, test_tokens = pack_token_sets(train_tokens, train_valid), pack_token_sets(test_tokens, test_valid)
    heads = seeded_heads(lambda: DecoderHead(token_dim, num_classes, width, depth, num_queries, num_heads, masked=masked),
                         len(lrs), seed, device)
    return fit_and_select(heads, lrs, train_tokens, train_y, test_tokens, test_y, epochs, batch_size, val_fraction, seed,
                          device, weight_decay, task, task.chunk_size(batch_size, tokens=True),
                          "decoder probe" if progress else None)


def check_decoder_options(cfg: Any) -> None:
    """AnnobootError naming the ``eval.decoder_probe_*`` key whose value cannot work."""
    for key in ("depth", "queries", "epochs"):
        value = getattr(cfg, f"decoder_probe_{key}")
        if value < 1:
            raise AnnobootError(f"bad config: key 'eval.decoder_probe_{key}' must be a positive integer, got {value}")
    if cfg.decoder_probe_dim is not None and cfg.decoder_probe_dim < 1:
        raise AnnobootError(
            f"bad config: key 'eval.decoder_probe_dim' must be a positive width or null (the token width), "
            f"got {cfg.decoder_probe_dim}"
        )
    require_learning_rates(cfg, "decoder_probe_lrs")


@register_probe("decoder", reads_tokens=True, check=check_decoder_options)
def fit_decoder_probe(train, test, train_targets, test_targets, num_outputs: int, cfg: Any, common: Dict) -> Tuple[Dict, Dict]:
    """The registered probe "decoder" on tokens, or on each example's marked tokens when the
    features carry a mask (eval.decoder_probe_*)."""
    outcome = decoder_probe(train.tokens, train_targets, test.tokens, test_targets, num_outputs,
                            tuple(cfg.decoder_probe_lrs), cfg.decoder_probe_epochs, cfg.decoder_probe_depth,
                            cfg.decoder_probe_queries, cfg.decoder_probe_dim, train_valid=train.token_mask,
                            test_valid=test.token_mask, **common)
    details = {"epochs": cfg.decoder_probe_epochs, "num_tokens": train.tokens.shape[1], "depth": cfg.decoder_probe_depth,
               "queries": cfg.decoder_probe_queries, "dim": decoder_width(cfg.decoder_probe_dim, train.tokens.shape[2])}
    return outcome, {**details, **outcome}
