"""Decoded images of a small file-backed source, kept in memory for the whole run.

A training run visits a small captioned set (Tux Paint's 700 stamps, Open Clip Art's 6k
drawings) dozens of times; decoding every PNG again each epoch capped such runs at about 80
images/s on 2 cores, with decode workers competing with the training step for the same cores.
:func:`cache_decoded` decodes the set once (with the source's decode workers) and serves it from
memory afterwards, so the stream needs no worker processes. Sources whose decoded images do not
fit the budget (``data.<stream>.cache_mb``) are left as they are.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from annoboot.data.base import ImageSource

logger = logging.getLogger(__name__)


class _Loads(Dataset):
    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        return self.source.load(index)


class DecodedImages(ImageSource):
    """``source``'s images decoded once: the same labels, captions and skip reasons."""

    needs_decode_workers = False  # the stream serves them from this process

    def __init__(self, source: ImageSource, images: List[Optional[torch.Tensor]], reasons: List[Optional[str]]):
        self.source = source
        self.images, self.reasons = images, reasons
        self.name = source.name
        self.labels, self.class_names, self.captions = source.labels, source.class_names, source.captions
        root = getattr(source, "root", None)
        if root is not None:
            self.root = root

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Optional[torch.Tensor]:
        return self.images[index]

    def load(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        return self.images[index], self.reasons[index]

    def describe(self) -> str:
        return f"{self.source.describe()} (decoded in memory)"


def cache_decoded(source: ImageSource, budget_mb: int, num_workers: int = 0, progress: bool = True) -> ImageSource:
    """``source`` decoded into memory when its images fit in ``budget_mb`` MB, else ``source``.

    Sources that are already one tensor in memory, or that need no decoding workers, are
    returned as they are; so is every source when ``budget_mb`` is 0. Decoding stops as soon as
    the budget is exceeded.
    """
    if budget_mb <= 0 or source.in_memory() is not None or not source.needs_decode_workers:
        return source
    budget = budget_mb * (1 << 20)
    loader = DataLoader(_Loads(source), batch_size=None, num_workers=num_workers)
    images: List[Optional[torch.Tensor]] = []
    reasons: List[Optional[str]] = []
    total = 0
    for image, reason in tqdm(loader, total=len(source), desc=f"decoding {source.name} into memory", unit="img",
                              leave=False, disable=not progress):
        if image is not None:
            image = image.clone()  # out of the worker's shared memory: one file descriptor each otherwise
            total += image.numel()
            if total > budget:
                logger.info("%s: decoded images exceed data cache_mb=%d; decoding them every epoch", source.name, budget_mb)
                return source
        images.append(image)
        reasons.append(reason)
    logger.info("%s: %d images decoded into memory (%.0f MB)", source.name, len(images), total / (1 << 20))
    return DecodedImages(source, images, reasons)
