"""Frozen-encoder features of a whole labelled source, computed once and shared by every probe.

Each batch is rendered as a whole image (see :func:`annoboot.views.render_full_images`), passed
through the encoder under ``torch.inference_mode`` and copied to CPU at once, so device memory
stays bounded by one batch. Tokens, the largest part by far, are stored as float16.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from annoboot.data.base import ImageSource
from annoboot.data.stream import iter_eval_batches
from annoboot.errors import AnnobootError
from annoboot.models.encoder import Encoder
from annoboot.runtime import autocast_context
from annoboot.views import Normalize, render_full_images


@dataclass
class Features:
    """What the probes read, all on CPU.

    pooled: (N, D) float32, the encoder's pooled vector (kNN, linear probe).
    tokens: (N, T, D) float16, the encoder's tokens (MAP probe), or None when not kept.
    labels: (N,) int64.
    token_mask: (N, T) bool, the tokens a token probe may read of each example (e.g. those inside
        an item's box, eval/in_context.py), or None: all of them.
    """

    pooled: torch.Tensor
    tokens: Optional[torch.Tensor]
    labels: torch.Tensor
    token_mask: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.labels.shape[0]


def _module_device(module: nn.Module) -> Optional[torch.device]:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return None if tensor is None else tensor.device


def extract_features(
    encoder: Encoder,
    source: ImageSource,
    img_size: int,
    normalize: Normalize,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    keep_tokens: bool = False,
    num_workers: int = 0,
    progress: bool = False,
) -> Features:
    """Encode every image of ``source`` once, in order.

    Args:
        encoder: the frozen encoder, already on ``device``. It runs in eval mode; the mode it
            had is restored afterwards.
        source: a labelled image source; undecodable files are skipped with their labels.
        img_size: side S the whole images are resized to, (3, S, S).
        normalize: the normalisation used in pre-training (copied to ``device`` if elsewhere).
        batch_size: images per forward pass.
        device: where the encoder runs. The forward runs under bf16 autocast on CUDA and on CPUs
            with native BF16 (``annoboot.runtime.resolve_precision``, 'auto').
        keep_tokens: also return the tokens (N, T, D) as float16 (memory: N * T * D * 2 bytes).
        num_workers: decode workers for file-backed sources.
        progress: show a tqdm progress bar.

    Returns:
        :class:`Features` on CPU: pooled (N, D) float32, tokens (N, T, D) float16 or None,
        labels (N,) int64, with N the number of decodable images.
    """
    if source.labels is None:
        raise AnnobootError(
            f"evaluation source '{source.name}' has no labels; probes need them "
            "(for an image folder, set labels_from_subfolders=true and put each class in its own sub-folder)"
        )
    device = torch.device(device)
    encoder_device = _module_device(encoder)
    if encoder_device is not None and encoder_device.type != device.type:
        raise ValueError(f"extract_features: the encoder is on {encoder_device} but device is {device}; move it first")
    if _module_device(normalize) not in (None, device):
        normalize = copy.deepcopy(normalize).to(device)

    batches = iter_eval_batches(source, batch_size, num_workers)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-len(source) // batch_size), desc=f"features {source.name}", unit="batch",
                       leave=False)

    # Filled in place, sized for every image; trimmed at the end if some did not decode.
    capacity = len(source)
    pooled: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    labels = torch.empty(capacity, dtype=torch.int64)
    filled = 0
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                images = render_full_images(batch.to(device), img_size, normalize)
                with autocast_context(device, "auto"):
                    out = encoder(images)
                stop = filled + len(batch)
                if pooled is None:
                    # Allocated as normal tensors: inference tensors could not be trained on later.
                    with torch.inference_mode(False):
                        pooled = torch.empty((capacity, out.pooled.shape[1]), dtype=torch.float32)
                        if keep_tokens:
                            tokens = torch.empty((capacity, *out.tokens.shape[1:]), dtype=torch.float16)
                pooled[filled:stop] = out.pooled.float().cpu()
                if tokens is not None:
                    tokens[filled:stop] = out.tokens.to(torch.float16).cpu()
                labels[filled:stop] = batch.labels  # type: ignore[assignment]  # CPU: only images went to the device
                filled = stop
    finally:
        encoder.train(was_training)

    if pooled is None:
        raise AnnobootError(f"evaluation source '{source.name}' holds no images; check its root and limit")
    if filled < capacity:  # copies, so the unused rows are freed
        pooled, labels = pooled[:filled].clone(), labels[:filled].clone()
        tokens = None if tokens is None else tokens[:filled].clone()
    return Features(pooled=pooled, tokens=tokens, labels=labels)
