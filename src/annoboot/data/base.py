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
    """A batch of decoded images: padded to a common size, or packed into one canvas.

    images: (B, C, H, W) uint8, C in {1, 3}; image i occupies images[i, :, :h_i, :w_i]. Or,
        when ``origins`` is given, (1, C, H, W): one canvas holding every image, image i at
        images[0, :, y_i:y_i + h_i, x_i:x_i + w_i] (batches of mixed sizes, see ``pad_collate``:
        padding each image to the largest height and width wastes most of the batch there).
    sizes:  (B, 2) int64, (h_i, w_i) of each image's valid region in pixels.
    labels: (B,) int64 when the source has labels (evaluation), else None.
    captions: B strings when the source has captions (CLIP/ABCLIP), else None; a caption may
        be "" for an image without text (sources that need text drop such images instead).
    caption_tokens: (B, L) int64 token ids of ``captions`` when the stream was given the
        method's tokenizer (tokenised in its loader workers, or once up front), else None.
    origins: (B, 2) int64, (y_i, x_i) of each image in the canvas, or None (one image per row
        of ``images``).
    """

    images: torch.Tensor
    sizes: torch.Tensor
    labels: Optional[torch.Tensor] = None
    captions: Optional[List[str]] = None
    caption_tokens: Optional[torch.Tensor] = None
    origins: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.sizes.shape[0]

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as a (C, h, w) uint8 view, whichever the layout."""
        h, w = (int(v) for v in self.sizes[index])
        if self.origins is None:
            return self.images[index, :, :h, :w]
        y, x = (int(v) for v in self.origins[index])
        return self.images[0, :, y : y + h, x : x + w]

    def filled_to(self, size: int) -> "ImageBatch":
        """This batch with its first images repeated until it holds ``size`` (unchanged if it
        already does). Training streams fill batches that lost undecodable files, so every rank
        gathers equally many embeddings and step shapes stay fixed."""
        count = len(self)
        if count >= size or count == 0:
            return self
        rows = torch.arange(size) % count

        def pick(values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if values is None else values[rows.to(values.device)]

        return ImageBatch(
            self.images if self.origins is not None else pick(self.images),  # a canvas is shared
            pick(self.sizes),
            pick(self.labels),
            None if self.captions is None else [self.captions[i] for i in rows.tolist()],
            pick(self.caption_tokens),
            pick(self.origins),
        )

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "ImageBatch":
        def move(values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if values is None else values.to(device, non_blocking=non_blocking)

        return ImageBatch(
            move(self.images), move(self.sizes), move(self.labels), self.captions, move(self.caption_tokens), move(self.origins)
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
