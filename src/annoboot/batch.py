"""The batch every stage shares: sources and streams produce it, views render crops from it,
methods and evaluation consume it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch


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


__all__ = ["ImageBatch"]
