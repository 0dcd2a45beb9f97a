"""The one interface every image source implements (the batch they produce: annoboot.batch).

Sources only read and decode: crops and augmentations are rendered later on the device from
sampled boxes (see ``annoboot.views``), so that the actions are known exactly.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch.utils.data import Dataset


class ImageSource(Dataset):
    """Indexable decoded images.

    ``source[i]`` returns a (C, H, W) uint8 tensor, or None when the file cannot be decoded
    (the caller skips and counts it). Sources that fit in memory as one fixed-size tensor
    return it from :meth:`in_memory`, so the trainer can keep the whole set on the GPU.
    """

    name: str = "source"
    labels: Optional[torch.Tensor] = None  # (N,) int64, evaluation only
    class_names: Optional[List[str]] = None
    captions: Optional[List[str]] = None  # (N,) weak text per image (captioned sets), else None
    needs_decode_workers: bool = True  # False when reading an image costs no decoding (in memory)
    # Seconds one file read may take before the run stops naming the file (sources that read image
    # files; 0: wait forever). build_source sets it from data.<stream>.read_timeout.
    read_timeout: float = 0.0

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def load(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        """(image, None), or (None, why it could not be decoded) for the per-reason skip counts.
        Sources that know why a file failed override this; the default only says that it did."""
        image = self[index]
        return image, None if image is not None else "undecodable"

    def in_memory(self) -> Optional[torch.Tensor]:
        """(N, C, H, W) uint8 of the whole source when it is small and uniform, else None."""
        return None

    def describe(self) -> str:
        return f"{self.name}: {len(self)} images"


class InMemoryImageSource(ImageSource):
    """A source whose images are one (N, C, H, W) uint8 tensor, ``self._images``, set by the
    subclass: the whole set can live on the training device (see :class:`BatchStream`)."""

    _images: torch.Tensor
    needs_decode_workers = False

    def __len__(self) -> int:
        return self._images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        """(C, H, W) uint8; a copy, so that callers cannot alter the set."""
        return self._images[index].clone()

    def in_memory(self) -> torch.Tensor:
        return self._images
