"""Float32 islands inside bf16 autocast.

Similarities that feed a softmax with a small temperature (NT-Xent at 0.1, the DINO teacher at
0.04, CLIP's scale of up to 100) lose their ranking in bf16, whose 8-bit mantissa rounds a
cosine near 1 in steps of 0.004: after dividing by 0.04 that is a tenth of a logit. Autocast
would run these products in bf16 even on float32 inputs, and ``.float()`` on the result comes
too late, so they go through :func:`float32_matmul`.
"""

from __future__ import annotations

import torch


def float32_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` computed and returned in float32, whatever autocast is active."""
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float()


def float32_einsum(equation: str, *operands: torch.Tensor) -> torch.Tensor:
    """``torch.einsum`` computed and returned in float32, whatever autocast is active."""
    with torch.autocast(operands[0].device.type, enabled=False):
        return torch.einsum(equation, *(x.float() for x in operands))
