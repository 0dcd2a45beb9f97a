"""What a stream does with a batch of loaded items, whatever the stream (indexed sources in
stream.py, webdataset shards in shards.py): pack images of different sizes into one padded batch
(:func:`pack_layout`, :func:`pad_collate`), tokenise captions where they decode, count the items
that could not be used and stop on a hopeless source (:class:`SkipCounter`), and, under DDP, have
the processes agree on each batch (:func:`agreed_to_use`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from annoboot import distributed
from annoboot.batch import ImageBatch
from annoboot.errors import AnnobootError

logger = logging.getLogger(__name__)

# Captions -> (B, L) int64 token ids: the method's tokenizer, which streams run where they decode.
Tokenize = Callable[[List[str]], torch.Tensor]


class LoaderItem(NamedTuple):
    """One image as a loader worker hands it to the collate (:func:`pad_collate`)."""

    image: Optional[torch.Tensor]  # (C, h, w) uint8; None when it could not be used
    label: Optional[int] = None
    caption: Optional[str] = None
    skip_reason: Optional[str] = None  # why image is None (decode.failure_reason), for the skip counts
    caption_tokens: Optional[torch.Tensor] = None  # (L,) int64 token ids of the caption, when tokenised


def pack_layout(sizes: Sequence[Tuple[int, int]]) -> Tuple[int, int, List[Tuple[int, int]]]:
    """Shelf packing of images of (h, w) into one canvas: (height, width, origins (y, x)).

    Each image gets a cell one pixel larger on every side (see :func:`pad_collate`); cells are
    placed tallest first, left to right in shelves of a roughly square canvas. On Open Clip Art
    the canvas is about 1.2x the images' own area, where padding every image to the batch's
    largest height and width takes 5.5-8x (``benchmarks/batch_packing.py``)."""
    cells = [(h + 2, w + 2) for h, w in sizes]
    width = max(max(w for _, w in cells), math.ceil(math.sqrt(sum(h * w for h, w in cells))))
    origins: List[Tuple[int, int]] = [(0, 0)] * len(cells)
    x = y = shelf = 0
    for i in sorted(range(len(cells)), key=lambda i: -cells[i][0]):
        h, w = cells[i]
        if x + w > width:
            x, y, shelf = 0, y + shelf, 0
        origins[i] = (y + 1, x + 1)  # the image inside its cell's border
        x, shelf = x + w, max(shelf, h)
    return y + shelf, width, origins


def pad_collate(items: Sequence[LoaderItem | Tuple[Any, ...]]) -> Tuple[ImageBatch, int]:
    """Stack decoded images into one batch: padded when they share a size, packed otherwise.

    items: :class:`LoaderItem` (or plain tuples in its field order, e.g. ``(image, None)``); the
    skip reason is ignored here. None images are dropped with their labels, captions and tokens.
    1-channel images in a batch that also holds 3-channel ones are repeated to 3 channels.

    Images of one size are stacked as (B, C, h, w). Images of mixed sizes are packed into one
    canvas (1, C, H, W) at ``batch.origins`` (:func:`pack_layout`), each with a one-pixel border
    repeating its edge: bilinear rendering at an image's border reads one pixel beyond it, so
    a view then does not depend on which images share its batch.

    Returns (batch, skipped): batch.images uint8, batch.sizes (B, 2) int64 (h, w),
    batch.origins (B, 2) int64 or None, batch.labels (B,) int64 or None when no item carries a
    label, batch.captions a list of B strings or None when no item carries a caption (a missing
    one becomes ""), batch.caption_tokens (B, L) int64 when every kept item carries tokens, else
    None; skipped = number of None images. With nothing decodable, batch is empty: images
    (0, 3, 0, 0). The batch is built on the device of the first image (all images must be on
    one device).
    """
    kept = [LoaderItem(*item) for item in items if item[0] is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return ImageBatch(torch.zeros((0, 3, 0, 0), dtype=torch.uint8), torch.zeros((0, 2), dtype=torch.int64)), skipped
    device = kept[0].image.device
    channels = max(item.image.shape[0] for item in kept)
    shapes = [tuple(item.image.shape[1:]) for item in kept]
    sizes = torch.tensor(shapes, dtype=torch.int64)
    origins = None
    if len(set(shapes)) == 1:
        images = torch.empty((len(kept), channels, *shapes[0]), dtype=torch.uint8, device=device)
        for i, item in enumerate(kept):
            images[i] = item.image  # broadcasting repeats a 1-channel image over C
    else:
        height, width, corners = pack_layout(shapes)
        images = torch.zeros((1, channels, height, width), dtype=torch.uint8, device=device)
        canvas = images[0]
        for item, (h, w), (y, x) in zip(kept, shapes, corners):
            canvas[:, y : y + h, x : x + w] = item.image
            canvas[:, y - 1, x : x + w] = canvas[:, y, x : x + w]  # edge rows, then edge columns
            canvas[:, y + h, x : x + w] = canvas[:, y + h - 1, x : x + w]
            canvas[:, y - 1 : y + h + 1, x - 1] = canvas[:, y - 1 : y + h + 1, x]
            canvas[:, y - 1 : y + h + 1, x + w] = canvas[:, y - 1 : y + h + 1, x + w - 1]
        origins = torch.tensor(corners, dtype=torch.int64).to(device)
    sizes = sizes.to(device)
    captions = [item.caption for item in kept]
    batch_captions = None if all(c is None for c in captions) else [c or "" for c in captions]
    token_rows = [item.caption_tokens for item in kept]
    tokens = None if any(row is None for row in token_rows) else torch.stack(token_rows).to(device)
    labels = [item.label for item in kept]
    batch_labels = None
    if any(label is not None for label in labels):
        if any(label is None for label in labels):
            raise ValueError("pad_collate: either every item has a label or none has")
        batch_labels = torch.tensor([int(label) for label in labels], dtype=torch.int64)
    return ImageBatch(images, sizes, batch_labels, batch_captions, tokens, origins), skipped


def with_caption_tokens(item: Any, tokenize: Tokenize) -> Any:
    """A loader item (a :class:`LoaderItem`, or a shard sample's ``EncodedSample``) with its
    caption's (L,) token ids (of "" when it has none); runs in the loader workers, off the
    training thread."""
    return item._replace(caption_tokens=tokenize([item.caption or ""])[0])


def skip_reasons(items: Sequence[Any]) -> Dict[str, int]:
    """{reason: count} of the items whose image is None (:class:`LoaderItem`); its skip reason,
    when it has one, says why (see :func:`annoboot.data.decode.failure_reason`)."""
    reasons = Counter(item.skip_reason or "undecodable" for item in items if item.image is None)
    return dict(reasons)


def collate_to_tuple(items: Sequence[LoaderItem]) -> Tuple[Any, ...]:
    """pad_collate as plain (images, sizes, labels, captions, caption tokens, origins, {skip
    reason: count}): the DataLoader pins tensors inside tuples but passes a dataclass through
    unpinned."""
    batch, _ = pad_collate(items)
    return batch.images, batch.sizes, batch.labels, batch.captions, batch.caption_tokens, batch.origins, skip_reasons(items)


# The processes' vote on each batch read from files (the smallest wins): stop, skip it, use it.
_STOP, _SKIP, _USE = 0, 1, 2


def agreed_to_use(skips: "SkipCounter", tried: int, reasons: Dict[str, int], usable: bool, world_size: int) -> bool:
    """Count one batch of this process's share (``tried`` images, ``reasons`` of the bad ones)
    and say whether every process uses its batch (else all skip to the next).

    The processes agree: a batch is skipped by every one when any one's share held no usable
    image (alone, that rank would walk ahead of the others), and all stop when one's source is
    hopeless (the others would otherwise wait for it at the next collective). Raises
    AnnobootError to stop."""
    try:
        skips.add(tried, reasons)  # raises once the source is hopeless
        verdict, stopped = (_USE if usable else _SKIP), None
    except AnnobootError as exc:
        verdict, stopped = _STOP, exc
    if world_size > 1:
        verdict = distributed.min_over_ranks(verdict)
    if verdict == _STOP:
        raise stopped or AnnobootError(f"{skips.source}: another process stopped on its share of this source (its "
                                       "error says why)")
    return verdict == _USE


class SkipCounter:
    """Images a training stream could not use: the running total (kept in checkpoints), counts
    per reason (logged each time the total since start doubles), and two stop rules. A source
    that is mostly bad: more than ``max_bad_fraction`` of the images tried since this process
    started, once at least :attr:`MIN_TRIED` were tried (1.0 never stops on this one). A source
    where nothing decodes: ``max_bad_in_a_row`` images in a row unusable (batches in which
    nothing decoded are replaced by the next ones until then, whatever the fraction allows).

    ``source``: what to name in messages (a folder, a shard pattern); ``inspect``: the argument
    of the ``annoboot data inspect`` command that explains the failures.
    """

    MIN_TRIED = 256
    MAX_BAD_IN_A_ROW = 1024

    def __init__(
        self, source: str, inspect: str, max_bad_fraction: float = 0.5, max_bad_in_a_row: int = MAX_BAD_IN_A_ROW
    ):
        if not 0 < max_bad_fraction <= 1:
            raise AnnobootError(
                f"max_bad_fraction must be in (0, 1], got {max_bad_fraction} (data.<stream>.max_bad_fraction)"
            )
        self.source, self.inspect, self.max_bad_fraction = source, inspect, max_bad_fraction
        self.max_bad_in_a_row = max_bad_in_a_row
        self.total = 0
        self.by_reason: Counter = Counter()
        self.tried = 0  # over the run: kept in the stream's state, so a resume judges as the run would
        self.bad = 0
        self.bad_in_a_row = 0  # since the last batch with a usable image: a stream's position, kept in its state
        self._log_at = 1

    def add(self, tried: int, reasons: Dict[str, int]) -> None:
        """Count one batch: ``tried`` images attempted, ``reasons`` of those that failed."""
        bad = sum(reasons.values())
        self.tried += tried
        self.bad += bad
        self.total += bad
        self.bad_in_a_row = self.bad_in_a_row + bad if bad == tried else 0
        self.by_reason.update(reasons)
        if bad and self.bad >= self._log_at:
            logger.warning(
                "%s: skipped %d of %d images so far (%s)", self.source, self.bad, self.tried, self.describe_reasons()
            )
            self._log_at = 2 * self.bad
        if self.tried >= self.MIN_TRIED and self.bad > self.max_bad_fraction * self.tried:
            raise AnnobootError(
                f"{self.source}: {self.bad} of {self.tried} images tried could not be used "
                f"({self.bad / self.tried:.0%}), "
                f"more than max_bad_fraction={self.max_bad_fraction:g} ({self.describe_reasons()}); "
                f"see which files and why with `annoboot data inspect {self.inspect}`, "
                "or raise data.<stream>.max_bad_fraction (1.0 stops only when nothing decodes)"
            )
        if self.bad_in_a_row >= self.max_bad_in_a_row:
            raise AnnobootError(
                f"{self.source}: none of the last {self.bad_in_a_row} images tried could be used "
                f"({self.describe_reasons()}); most files are unreadable (corrupt, truncated or not images): "
                f"check them with `annoboot data inspect {self.inspect}`"
            )

    def describe_reasons(self) -> str:
        return ", ".join(f"{reason}: {count}" for reason, count in self.by_reason.most_common())

    def state_dict(self) -> Dict[str, object]:
        """The counts a resumed stream continues from (the stop rules then fire where they would
        have in the uninterrupted run)."""
        return {"skipped": self.total, "tried": self.tried, "bad": self.bad, "bad_in_a_row": self.bad_in_a_row,
                "by_reason": dict(self.by_reason)}

    def load_state_dict(self, state: Dict) -> None:
        """From :meth:`state_dict`; keys an older checkpoint lacks start at 0."""
        self.total = int(state.get("skipped", 0))
        self.tried, self.bad = int(state.get("tried", 0)), int(state.get("bad", 0))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))
        self.by_reason = Counter({str(k): int(v) for k, v in dict(state.get("by_reason", {})).items()})
        self._log_at = max(1, 2 * self.bad)


__all__ = ["SkipCounter", "Tokenize", "agreed_to_use", "collate_to_tuple", "pack_layout", "pad_collate", "skip_reasons",
           "with_caption_tokens"]
