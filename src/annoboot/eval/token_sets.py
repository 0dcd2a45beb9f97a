"""Token sets of different sizes in one tensor, for the token probes (MAP, decoder).

A probe that reads only some tokens of each example (the tokens inside an item's box,
eval/in_context.py) gets them padded to a common length T with one extra channel that marks the
real ones: (N, T, D + 1), last channel 1 for a token, 0 for padding. Rows of that tensor are
gathered, moved and cast like any other probe input (eval/fitting.py), and a head built with
``masked=True`` splits them again and lets attention skip the padding.
"""

from __future__ import annotations

from typing import Tuple

import torch


def pack_token_sets(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """tokens (N, T, D), valid (N, T) bool (at least one True per row) -> (N, T, D + 1) of tokens' dtype."""
    if valid.shape != tokens.shape[:2]:
        raise ValueError(f"token sets: mask {tuple(valid.shape)} does not match tokens {tuple(tokens.shape)}")
    if not bool(valid.any(dim=1).all()):
        raise ValueError("token sets: every example needs at least one token")
    return torch.cat([tokens * valid[..., None].to(tokens.dtype), valid[..., None].to(tokens.dtype)], dim=-1)


def unpack_token_sets(rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D + 1) -> tokens (B, T, D) and the attention padding mask (B, T), True where padded."""
    return rows[..., :-1], rows[..., -1] < 0.5


__all__ = ["pack_token_sets", "unpack_token_sets"]
