"""MAP probe: multi-head attention pooling over frozen tokens, then a linear classifier.

A linear probe on the pooled vector only sees what the encoder's own pooling kept; the MAP
probe learns where to look among the tokens. This is where annotation bootstrapping shows its
gains (method.md, section 6), so an evaluation without it would hide the method's effect.

The head follows the MAP head of big_vision (``MAPHead``) and the idea of timm's
``AttentionPoolLatent``: one learned query attends over the LayerNorm'd tokens, the pooled
vector is refined by a residual MLP, and a linear layer classifies it. As for the linear probe,
one head per learning rate trains in the same pass and the val split picks the one reported.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from annoboot.eval.fitting import SINGLE_LABEL, check_probe_inputs, fit_and_select, seeded_heads
from annoboot.eval.registry import register_probe, require_learning_rates, require_positive
from annoboot.eval.token_sets import pack_token_sets, unpack_token_sets


def default_num_heads(dim: int) -> int:
    """The largest of 8, 6, 4, 3, 2, 1 that divides ``dim``."""
    return next(heads for heads in (8, 6, 4, 3, 2, 1) if dim % heads == 0)


class MAPHead(nn.Module):
    """Attention-pooling classifier over a set of tokens.

    forward(tokens (B, T, D)) -> logits (B, C):
        x = LayerNorm(tokens)
        p = MultiHeadAttention(query=q, keys=values=x)    # q: one learned (1, D) query
        p = p + MLP(LayerNorm(p))                         # MLP: D -> mlp_ratio * D -> D, GELU
        logits = Linear(p)

    Args:
        dim: token width D.
        num_classes: C.
        num_heads: attention heads; default :func:`default_num_heads` (D).
        mlp_ratio: hidden width of the MLP relative to D.
        masked: the input is a packed token set (B, T, D + 1) (eval/token_sets.py): the query
            attends to the marked tokens only.
    """

    def __init__(self, dim: int, num_classes: int, num_heads: Optional[int] = None, mlp_ratio: float = 4.0,
                 masked: bool = False):
        super().__init__()
        self.masked = masked
        num_heads = default_num_heads(dim) if num_heads is None else num_heads
        if dim % num_heads:
            raise ValueError(f"MAPHead: {num_heads} heads do not divide the token width {dim}")
        self.query = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.token_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.classifier = nn.Linear(dim, num_classes)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) tokens (or a packed (B, T, D + 1) set when ``masked``) -> (B, D) pooled
        vector, before the classifier."""
        padding = None
        if self.masked:
            tokens, padding = unpack_token_sets(tokens)
        keys = self.token_norm(tokens)
        query = self.query.expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attention(query, keys, keys, key_padding_mask=padding, need_weights=False)  # (B, 1, D)
        pooled = pooled + self.mlp(self.mlp_norm(pooled))
        return pooled[:, 0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(tokens))


def map_probe(
    train_tokens: torch.Tensor,
    train_y: torch.Tensor,
    test_tokens: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    lrs: Sequence[float] = (3e-4, 1e-3),
    epochs: int = 10,
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
    """Train one :class:`MAPHead` per learning rate on frozen tokens; report the best.

    Tokens stay where they are (typically CPU, float16) and each batch is gathered, moved to
    ``device`` and cast to float32 on the way, so device memory holds one batch of tokens.
    ``val_fraction`` of the train split (seeded) is held out to choose the learning rate; every
    head starts from the same seeded initialisation and sees the same batches (AdamW, cosine
    decay). Evaluation is chunked. Deterministic for a seed on CPU; on CUDA the attention
    kernels' backward may differ in the last bits between runs.

    Args:
        train_tokens: (N, T, D), any float dtype; train_y: (N,) int64 in [0, num_classes).
        test_tokens: (M, T, D); test_y: (M,).
        num_classes: C.
        lrs: the learning-rate grid.
        epochs, batch_size: passes over the fit split and rows per step.
        val_fraction: share of the train split held out to choose the learning rate.
        seed: fixes the split, the initialisation and the batch order.
        device: where the heads train.
        num_heads: attention heads; default the largest of 8, 6, 4, 3, 2, 1 dividing D.
        weight_decay: AdamW weight decay.
        progress: show a progress bar while the heads train.
        task: ``fitting.SINGLE_LABEL``, or ``multilabel.MULTI_LABEL`` with (N, C) multi-hot
            targets and C = num_classes (keys then "test_map", "test_f1", "val_map", ...).
        train_valid, test_valid: (N, T) / (M, T) bool, the tokens each example's query may read
            (e.g. those inside an item's box); None: all of them.

    Returns:
        {"test_acc": %, "val_acc": %, "best_lr": float, "val_acc_by_lr": {"0.0003": %, ...}}.
    """
    check_probe_inputs(train_tokens, train_y, test_tokens, test_y, lrs)
    if train_tokens.ndim != 3:
        raise ValueError(f"map_probe: tokens must be (N, T, D), got {tuple(train_tokens.shape)}")
    device = torch.device(device)
    dim = train_tokens.shape[2]
    masked = train_valid is not None
    if masked:
        train_tokens, test_tokens = pack_token_sets(train_tokens, train_valid), pack_token_sets(test_tokens, test_valid)
    heads = seeded_heads(lambda: MAPHead(dim, num_classes, num_heads, masked=masked), len(lrs), seed, device)
    return fit_and_select(heads, lrs, train_tokens, train_y, test_tokens, test_y, epochs, batch_size, val_fraction, seed,
                          device, weight_decay, task, task.chunk_size(batch_size, tokens=True),
                          "MAP probe" if progress else None)


def _check_map_options(cfg: Any) -> None:
    require_positive(cfg, "map_epochs")
    require_learning_rates(cfg, "map_lrs")


@register_probe("map", reads_tokens=True, check=_check_map_options)
def fit_map_probe(train, test, train_targets, test_targets, num_outputs: int, cfg: Any, common: Dict) -> Tuple[Dict, Dict]:
    """The registered probe "map" on tokens, or on each example's marked tokens when the
    features carry a mask (eval.map_lrs, eval.map_epochs)."""
    outcome = map_probe(train.tokens, train_targets, test.tokens, test_targets, num_outputs, tuple(cfg.map_lrs),
                        cfg.map_epochs, train_valid=train.token_mask, test_valid=test.token_mask, **common)
    return outcome, {"epochs": cfg.map_epochs, "num_tokens": train.tokens.shape[1], **outcome}

