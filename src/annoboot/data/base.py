"""The one interface every image source implements, and the batch type the trainer consumes.

Sources only read and decode: crops and augmentations are rendered later on the device from
sampled boxes (see ``annoboot.views``), so that the actions are known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.utils.data import Dataset


@dataclass
class ImageBatch:
    """A batch of decoded images, padded to a common size.

    images: (B, C, H, W) uint8, C in {1, 3}; image i occupies images[i, :, :h_i, :w_i].
    sizes:  (B, 2) int64, (h_i, w_i) of each image's valid region in pixels.
    labels: (B,) int64 when the source has labels (evaluation), else None.
    captions: B strings when the source has captions (CLIP/ABCLIP), else None; a caption may
        be "" for an image without text (sources that need text drop such images instead).
    caption_tokens: (B, L) int64 token ids of ``captions`` when the stream was given the
        method's tokenizer (tokenised in its loader workers, or once up front), else None.
    """

    images: torch.Tensor
    sizes: torch.Tensor
    labels: Optional[torch.Tensor] = None
    captions: Optional[List[str]] = None
    caption_tokens: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def filled_to(self, size: int) -> "ImageBatch":
        """This batch with its first images repeated until it holds ``size`` (unchanged if it
        already does). Training streams fill batches that lost undecodable files, so every rank
        gathers equally many embeddings and step shapes stay fixed."""
        count = len(self)
        if count >= size or count == 0:
            return self
        rows = torch.arange(size) % count
        pick = rows.to(self.images.device)
        return ImageBatch(
            self.images[pick],
            self.sizes[rows.to(self.sizes.device)],
            None if self.labels is None else self.labels[rows.to(self.labels.device)],
            None if self.captions is None else [self.captions[i] for i in rows.tolist()],
            None if self.caption_tokens is None else self.caption_tokens[rows.to(self.caption_tokens.device)],
        )

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "ImageBatch":
        return ImageBatch(
            self.images.to(device, non_blocking=non_blocking),
            self.sizes.to(device, non_blocking=non_blocking),
            None if self.labels is None else self.labels.to(device, non_blocking=non_blocking),
            self.captions,
            None if self.caption_tokens is None else self.caption_tokens.to(device, non_blocking=non_blocking),
        )


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
