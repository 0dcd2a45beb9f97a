"""The EMA target network: a frozen copy of the whole method, averaged after every step."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A deep copy that receives no gradient."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for every parameter.

    Buffers (BatchNorm statistics) are copied, not averaged. One fused call per group of
    tensors (``_foreach_lerp_``) rather than a Python loop of kernel launches.
    """
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if momentum < 1.0:
        torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    for t_buf, o_buf in zip(target.buffers(), online.buffers()):
        t_buf.copy_(o_buf)


@torch.no_grad()
def relative_distance(target: nn.Module, online: nn.Module) -> float:
    """||theta_target - theta_online|| / ||theta_online|| over all parameters: how far the EMA
    target lags the online network (0 for a copy; near 1 or more while it is still mostly its
    initialisation and the online network has moved away from it)."""
    target_params, online_params = list(target.parameters()), list(online.parameters())
    gaps = torch._foreach_sub(target_params, online_params)
    gap = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gaps)))
    size = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(online_params)))
    return float(gap / size.clamp_min(1e-12))
