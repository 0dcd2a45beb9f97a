"""Everything torch.distributed in one place.

Launch with ``torchrun --nproc_per_node N annoboot pretrain ...``: torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK, and :func:`init_from_env` joins the process group (NCCL on GPUs,
gloo on CPU). Without those variables everything here is a no-op for one process.

Losses that need every rank's embeddings call :func:`gather_with_grad`: the result holds all
ranks' rows, and gradients flowing into other ranks' rows are sent back to them (summed), so
with DDP's gradient averaging a per-rank loss ``mean over local rows`` trains exactly like the
same loss on the whole global batch in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from timm.layers import convert_sync_batchnorm


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (once)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if not is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm layers -> SyncBatchNorm, keeping what timm fuses into its norm layers.

    torch's ``convert_sync_batchnorm`` turns timm's ``BatchNormAct2d`` into a plain
    SyncBatchNorm and drops the activation and drop-path it carries (EfficientNet, RegNet:
    a different network); timm's converter keeps them.
    """
    return convert_sync_batchnorm(module)


def shutdown() -> None:
    """Leave the process group. Without this, gloo's threads are still running when the
    interpreter exits and a rank can abort ("terminate called without an active exception")."""
    global _HOST_GROUP
    if is_initialized():
        dist.destroy_process_group()
    _HOST_GROUP = None


def barrier() -> None:
    if is_initialized():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss may depend on this rank's rows
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) per rank -> (world * n, ...) in rank order; differentiable. Equal n on all ranks."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, without gradient (e.g. EMA-target embeddings)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_objects(obj: object) -> list:
    """[rank 0's obj, rank 1's obj, ...] on every rank (small Python objects, e.g. RNG states)."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value)
    return bool(value.item())


_HOST_GROUP = None


def _host_group():
    """A gloo group over every rank for small votes made on the host (None: the default group is
    gloo already). Under NCCL a vote in the default group would copy to the GPU and wait for its
    queue each step. Created on first use, which every rank reaches at the same call."""
    global _HOST_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.new_group(backend="gloo")
    return _HOST_GROUP


def min_over_ranks(value: int) -> int:
    """The smallest of every rank's ``value`` (a vote), on every rank; host-side."""
    if world_size() == 1:
        return value
    vote = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(vote, op=dist.ReduceOp.MIN, group=_host_group())
    return int(vote.item())


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()
