"""Where and how the step runs: device, precision, attention kernels and the CPU allocator.

The choices here are measured on the project's 2-core CPU (AVX-512 with native BF16; figures
in docs/results.md) and on the CUDA defaults of PyTorch:

- ``train.precision=auto`` is bf16 autocast on CUDA and on CPUs with native BF16 instructions
  (AVX512-BF16 or AMX), fp32 elsewhere: bf16 matrix products run about 3x faster there.
- On the CPU the fused attention kernel's *backward* in bf16 is several times slower than
  plain matrix products for the short token sequences of small views, so modules that expose
  timm's ``fused_attn`` switch (timm ViTs, our value decoder) use the explicit form there.
- glibc returns large freed blocks to the system at once; every training step then faults its
  activations back in page by page (about 5,000 faults per step on the quick recipe). Raising
  the mmap and trim thresholds keeps them in the heap for reuse.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
from typing import Optional

import torch
from torch import nn

from annoboot.errors import AnnobootError

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_allocator_tuned = False


def resolve_device(name: str) -> torch.device:
    """``train.device`` -> a torch device; 'auto' picks CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnnobootError(f"train.device={name} but CUDA is not available on this machine; use train.device=cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(device: torch.device, precision: str) -> str:
    """``train.precision`` -> 'bf16' or 'fp32' for ``device`` ('auto': bf16 where it is native)."""
    if precision != "auto":
        return precision
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast when ``precision`` resolves to bf16 on ``device``, else nothing."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_for_training(module: nn.Module) -> None:
    """``torch.compile`` ``module`` in place with static shapes.

    A training step calls an encoder with a few fixed input shapes (DINO: one per crop size).
    ``dynamic=False`` compiles one specialised graph per shape, once each, instead of letting a
    new shape turn the encoder into a dynamic-shape graph with shape-generic kernels. Probes,
    which see many batch sizes, run the same module eagerly (:func:`eager`).
    """
    module.compile(dynamic=False)


def eager():
    """A context in which compiled modules run their eager code and compile nothing: probing a
    compiled encoder over many batch sizes would otherwise compile a graph for each."""
    return torch.compiler.set_stance("force_eager")


def set_fused_attention(module: nn.Module, fused: bool) -> int:
    """Switch every submodule with a ``fused_attn`` flag (timm attention, the value decoder) to
    the fused kernel or the explicit softmax(q k^T) v form. Returns how many were switched."""
    count = 0
    for sub in module.modules():
        if hasattr(sub, "fused_attn"):
            sub.fused_attn = fused
            count += 1
    return count


def prepare_for_device(module: nn.Module, device: torch.device) -> None:
    """Kernel choices for training ``module`` on ``device`` (see the module docstring)."""
    if device.type == "cpu":
        set_fused_attention(module, False)
        tune_cpu_allocator()


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in glibc's heap (once per process); False where not glibc."""
    global _allocator_tuned
    if _allocator_tuned or not sys.platform.startswith("linux"):
        return _allocator_tuned
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    _allocator_tuned = bool(ok)
    return _allocator_tuned


def describe(device: torch.device, precision: str, compiled: bool) -> str:
    """One line for logs and benchmark headers: device, resolved precision, compile."""
    if device.type == "cuda":
        name: Optional[str] = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads{', native bf16' if cpu_has_native_bf16() else ''}"
    return f"{name}; precision {resolve_precision(device, precision)}; compile {compiled}"
