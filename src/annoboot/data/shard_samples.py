"""One webdataset sample to one loader item, in the loader workers (data/shards.py streams them).

:func:`decode_sample` decodes the image member (CPU decoding); :func:`read_sample` is the worker
side of decoding on the device: a plain JPEG travels as its bytes, anything else is decoded here.
:func:`collate_encoded` packs a batch of :func:`read_sample` items for the trip from the worker,
:func:`split_jpegs` takes its JPEGs apart again on the training side.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from annoboot.data.batching import LoaderItem, skip_reasons
from annoboot.data.captions import sample_caption
from annoboot.data.decode import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    decode_image,
    exif_orientation,
    failure_reason,
    open_image,
)

log = logging.getLogger(__name__)

# Every extension the folder source (and so ``data write-shards``) takes is an image member.
IMAGE_KEYS = tuple(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)


class EncodedSample(NamedTuple):
    """A sample as :func:`read_sample` hands it from the worker when decoding on the device."""

    pixels: Optional[torch.Tensor]  # (3, H, W) uint8 decoded here (not a plain JPEG), else None
    jpeg: Optional[torch.Tensor]  # (n,) uint8 bytes of a plain JPEG for the device decoder, else None
    caption: Optional[str]
    skip_reason: Optional[str]  # why both are None
    caption_tokens: Optional[torch.Tensor] = None


def decode_sample(
    sample: Dict[str, Any], max_short_side: int, require_caption: bool = False, max_pixels: int = MAX_IMAGE_PIXELS
) -> LoaderItem:
    """The sample's :class:`LoaderItem` (no label): image (3, H, W) uint8, or None for a sample
    without a decodable image, or without a caption when ``require_caption`` (image-text
    training); the skip reason then says which."""
    caption = sample_caption(sample)
    if require_caption and caption is None:
        log.debug("no caption in sample %s", sample.get("__key__"))
        return LoaderItem(None, skip_reason="no caption")
    for key in IMAGE_KEYS:
        if key in sample:
            try:
                return LoaderItem(decode_image(io.BytesIO(sample[key]), max_short_side, max_pixels), None, caption)
            except Exception as exc:  # corrupt bytes: counted by the collate, never fatal
                log.debug("undecodable %s in sample %s", key, sample.get("__key__"))
                return LoaderItem(None, None, caption, failure_reason(exc, len(sample[key])))
    return LoaderItem(None, None, caption, "no image member")


def read_sample(
    sample: Dict[str, Any], max_short_side: int, require_caption: bool = False, max_pixels: int = MAX_IMAGE_PIXELS
) -> EncodedSample:
    """Worker side of device decoding: the sample's :class:`EncodedSample`.

    A plain JPEG (RGB or grayscale, no EXIF rotation) comes back as ``jpeg``, its bytes as a
    (n,) uint8 tensor, for the batched device decoder; any other image is decoded here as
    ``pixels`` (3, H, W) uint8, short side capped. Both None: skipped, for ``reason``.
    Only the header is parsed for a JPEG (format, mode, EXIF; and the pixel cap of
    :func:`~annoboot.data.decode.open_image`).
    """
    caption = sample_caption(sample)
    if require_caption and caption is None:
        return EncodedSample(None, None, None, "no caption")
    key = next((key for key in IMAGE_KEYS if key in sample), None)
    if key is None:
        return EncodedSample(None, None, caption, "no image member")
    data = sample[key]
    try:
        with open_image(io.BytesIO(data), max_pixels) as header:  # and the pixel cap: the device decoder has none
            plain_jpeg = header.format == "JPEG" and header.mode in ("RGB", "L") and exif_orientation(header) == 1
        if plain_jpeg:
            return EncodedSample(None, torch.frombuffer(bytearray(data), dtype=torch.uint8), caption, None)
        return EncodedSample(decode_image(io.BytesIO(data), max_short_side, max_pixels), None, caption, None)
    except Exception as exc:  # unreadable header or pixels: counted, never fatal
        log.debug("undecodable %s in sample %s", key, sample.get("__key__"))
        return EncodedSample(None, None, caption, failure_reason(exc, len(data)))


def collate_encoded(
    items: Sequence[EncodedSample],
) -> Tuple[List[Any], torch.Tensor, torch.Tensor, List[Optional[str]], Optional[torch.Tensor], Dict[str, int]]:
    """read_sample outputs -> (pixels list, JPEG bytes (N,) uint8, JPEG lengths (B,) int64,
    captions, caption tokens (B, L) or None, {reason: count} of the samples that are neither), in
    sample order; the pixels list holds None where a sample has none, a length is 0 where a
    sample has no JPEG (a JPEG is never empty). The batch's JPEGs are concatenated and its tokens
    stacked because each tensor in a list travels from the worker as its own shared-memory file:
    one per JPEG runs out of file descriptors at batches of a few hundred. :func:`split_jpegs`
    takes them apart again."""
    skipped = [LoaderItem(None, skip_reason=i.skip_reason) for i in items if i.pixels is None and i.jpeg is None]
    tokens = torch.stack([i.caption_tokens for i in items]) if items and items[0].caption_tokens is not None else None
    jpegs = [i.jpeg for i in items if i.jpeg is not None]
    jpeg_bytes = torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8)
    jpeg_lengths = torch.tensor([0 if i.jpeg is None else len(i.jpeg) for i in items], dtype=torch.int64)
    return [i.pixels for i in items], jpeg_bytes, jpeg_lengths, [i.caption for i in items], tokens, skip_reasons(skipped)


def split_jpegs(jpeg_bytes: torch.Tensor, jpeg_lengths: torch.Tensor) -> List[Optional[torch.Tensor]]:
    """(N,) concatenated JPEG bytes and (B,) lengths (from :func:`collate_encoded`) -> each
    sample's JPEG as a view of ``jpeg_bytes`` (no copy), None where its length is 0."""
    parts = torch.split(jpeg_bytes, jpeg_lengths.tolist())
    return [part if len(part) else None for part in parts]
