"""Batches out of an :class:`ImageSource`: an endless, resumable training stream and an in-order
evaluation pass.

Training order is a pure function of (seed, epoch): epoch ``e`` visits
``torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))`` in full
batches, dropping the partial tail. The stream's state is therefore just (epoch, position), and
a resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from annoboot import distributed
from annoboot.batch import ImageBatch
from annoboot.data.base import ImageSource
from annoboot.errors import AnnobootError

logger = logging.getLogger(__name__)

# Spreads nearby (seed, epoch) pairs apart so that seed s, epoch 1 is not seed s + 1, epoch 0.
SEED_STRIDE = 1_000_003

# Captions -> (B, L) int64 token ids: the method's tokenizer, which streams run where they decode.
Tokenize = Callable[[List[str]], torch.Tensor]


def epoch_order(num_images: int, seed: int, epoch: int) -> torch.Tensor:
    """(N,) int64 permutation of the source's indices visited in ``epoch``."""
    generator = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
    return torch.randperm(num_images, generator=generator)


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


def pad_collate(items: Sequence[Tuple[Any, ...]]) -> Tuple[ImageBatch, int]:
    """Stack decoded images into one batch: padded when they share a size, packed otherwise.

    items: (image, label) or (image, label, caption) tuples; image is (C, h, w) uint8 or None
    (undecodable), label an int or None, caption a string or None; a 4th field (the skip reason)
    is ignored here, a 5th holds the caption's (L,) token ids or None. None images are dropped
    with their labels, captions and tokens. 1-channel images in a batch that also holds
    3-channel ones are repeated to 3 channels.

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
    kept = [item for item in items if item[0] is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return ImageBatch(torch.zeros((0, 3, 0, 0), dtype=torch.uint8), torch.zeros((0, 2), dtype=torch.int64)), skipped
    device = kept[0][0].device
    channels = max(item[0].shape[0] for item in kept)
    shapes = [tuple(item[0].shape[1:]) for item in kept]
    sizes = torch.tensor(shapes, dtype=torch.int64)
    origins = None
    if len(set(shapes)) == 1:
        images = torch.empty((len(kept), channels, *shapes[0]), dtype=torch.uint8, device=device)
        for i, item in enumerate(kept):
            images[i] = item[0]  # broadcasting repeats a 1-channel image over C
    else:
        height, width, corners = pack_layout(shapes)
        images = torch.zeros((1, channels, height, width), dtype=torch.uint8, device=device)
        canvas = images[0]
        for item, (h, w), (y, x) in zip(kept, shapes, corners):
            canvas[:, y : y + h, x : x + w] = item[0]
            canvas[:, y - 1, x : x + w] = canvas[:, y, x : x + w]  # edge rows, then edge columns
            canvas[:, y + h, x : x + w] = canvas[:, y + h - 1, x : x + w]
            canvas[:, y - 1 : y + h + 1, x - 1] = canvas[:, y - 1 : y + h + 1, x]
            canvas[:, y - 1 : y + h + 1, x + w] = canvas[:, y - 1 : y + h + 1, x + w - 1]
        origins = torch.tensor(corners, dtype=torch.int64).to(device)
    sizes = sizes.to(device)
    captions = [item[2] if len(item) > 2 else None for item in kept]
    batch_captions = None if all(c is None for c in captions) else [c or "" for c in captions]
    token_rows = [item[4] if len(item) > 4 else None for item in kept]
    tokens = None if any(row is None for row in token_rows) else torch.stack(token_rows).to(device)
    labels = [item[1] for item in kept]
    batch_labels = None
    if any(label is not None for label in labels):
        if any(label is None for label in labels):
            raise ValueError("pad_collate: either every item has a label or none has")
        batch_labels = torch.tensor([int(label) for label in labels], dtype=torch.int64)
    return ImageBatch(images, sizes, batch_labels, batch_captions, tokens, origins), skipped


def with_caption_tokens(item: Tuple[Any, ...], tokenize: Tokenize) -> Tuple[Any, ...]:
    """A loader item (image, label, caption, skip reason) with its caption's (L,) token ids
    appended (of "" when it has none); runs in the loader workers, off the training thread."""
    return (*item, tokenize([item[2] or ""])[0])


def skip_reasons(items: Sequence[Tuple[Any, ...]]) -> Dict[str, int]:
    """{reason: count} of the items whose image is None; an item's 4th field, when it has one,
    says why (see :func:`annoboot.data.decode.failure_reason`)."""
    reasons = Counter(item[3] if len(item) > 3 and item[3] else "undecodable" for item in items if item[0] is None)
    return dict(reasons)


def _collate_to_tuple(items: Sequence[Tuple[Any, ...]]) -> Tuple[Any, ...]:
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


class _ImagesWithLabels(Dataset):
    """(image or None, label or None, caption or None, skip reason or None) of a source: what
    pad_collate and skip_reasons consume; then the caption's token ids, when given
    ``caption_tokens`` (the source's, tokenised up front) or ``tokenize`` (run per item here,
    in the loader workers)."""

    def __init__(
        self,
        source: ImageSource,
        with_labels: bool,
        caption_tokens: Optional[torch.Tensor] = None,
        tokenize: Optional[Tokenize] = None,
    ):
        self.source = source
        self.with_labels = with_labels and source.labels is not None
        self.caption_tokens, self.tokenize = caption_tokens, tokenize

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[int], Optional[str], Optional[str]]:
        label = int(self.source.labels[index]) if self.with_labels else None  # type: ignore[index]
        caption = None if self.source.captions is None else self.source.captions[index]
        image, reason = self.source.load(index)
        item = (image, label, caption, reason)
        if self.caption_tokens is not None:
            return (*item, self.caption_tokens[index])
        if self.tokenize is not None:
            return with_caption_tokens(item, self.tokenize)
        return item


class _EndlessEpochBatches(Sampler[List[int]]):
    """Batch sampler: full batches of index lists, epoch after epoch, from a starting point.

    Endless, so the DataLoader keeps prefetching across epoch boundaries; :meth:`start_at` sets
    where the next ``iter()`` begins (a resume restarts the loader there).
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, rank_slice: slice = slice(None)):
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.rank_slice = rank_slice  # this rank's share of every global batch
        self._start = (0, 0)

    def start_at(self, epoch: int, position: int) -> None:
        self._start = (epoch, position)

    def __iter__(self) -> Iterator[List[int]]:
        return self._batches_from(*self._start)  # the start is bound now, not at first next()

    def _batches_from(self, epoch: int, position: int) -> Iterator[List[int]]:
        while True:
            full_batches = (self.num_images - position) // self.batch_size
            order = epoch_order(self.num_images, self.seed, epoch)
            batch_rows = order[position : position + full_batches * self.batch_size].view(full_batches, self.batch_size)
            yield from batch_rows[:, self.rank_slice].tolist()
            epoch, position = epoch + 1, 0


class BatchStream:
    """Endless stream of shuffled training batches, resumable mid-epoch.

    Each ``next(stream)`` is an :class:`ImageBatch` on ``device`` with labels None: images
    (B, C, H, W) uint8, sizes (B, 2) int64. Every batch covers ``batch_size`` consecutive
    indices of the epoch's order (see :func:`epoch_order`); images that fail to decode are
    dropped and the batch is filled back to its size by repeating decoded images of the same
    batch (:meth:`ImageBatch.filled_to`: equal batches on every rank). They are counted
    per reason, and more than ``max_bad_fraction`` of them stops the run (see
    :class:`SkipCounter`). A batch in which nothing decoded is passed over: the next batch of
    the order takes its place, and the state moves past both, so a resume does the same. A
    whole epoch's worth of undecodable images in a row (at most ``SkipCounter.MAX_BAD_IN_A_ROW``)
    stops the run whatever ``max_bad_fraction`` allows: nothing decodes.

    In-memory sources (``source.in_memory()`` not None) are moved to ``device`` once and
    batches are gathered there by index. Other sources are decoded by a DataLoader with
    ``num_workers`` processes, pinned (default: when ``device`` is CUDA) and copied without
    blocking.

    ``tokenize`` (image-text methods): batches carry ``caption_tokens``. The decode workers
    tokenise each image's caption; a stream without workers (in-memory or cached images)
    tokenises the source's captions once, here, so that no step tokenises on the training thread.

    Distributed: ``batch_size`` is the *global* batch; every rank walks the same order and
    keeps its contiguous share ``[rank * b, (rank + 1) * b)`` with ``b = batch_size //
    world_size``. The state (epoch, position) is global, so a checkpoint resumes on any world
    size with the same global batch.
    """

    def __init__(
        self,
        source: ImageSource,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        pin_memory: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        max_bad_fraction: float = 0.5,
        tokenize: Optional[Tokenize] = None,
    ):
        num_images = len(source)
        if batch_size <= 0:
            raise AnnobootError(f"batch size must be positive, got {batch_size}")
        if batch_size % world_size:
            raise AnnobootError(
                f"batch size {batch_size} of {source.name} does not split evenly over {world_size} processes; "
                "choose train.batch_size so every stream's batch is a multiple of the world size"
            )
        self.local_batch_size = batch_size // world_size
        self._world_size = world_size
        self._rank_slice = slice(rank * self.local_batch_size, (rank + 1) * self.local_batch_size)
        if num_images < batch_size:
            raise AnnobootError(
                f"{source.name} has {num_images} images, fewer than one batch of {batch_size}: "
                "lower train.batch_size or point the source at more images (check its limit)"
            )
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self._num_images = num_images
        self._epoch = 0
        self._position = 0
        where = getattr(source, "root", None)
        label = f"{source.name} ({where})" if where else source.name
        images_per_epoch = num_images // batch_size * self.local_batch_size  # this rank's, without the tail
        self._skips = SkipCounter(
            label, where or source.name, max_bad_fraction, min(SkipCounter.MAX_BAD_IN_A_ROW, images_per_epoch)
        )

        all_images = source.in_memory()
        self._tokenize = tokenize if source.captions is not None else None
        tokenize_up_front = self._tokenize is not None and (all_images is not None or num_workers == 0)
        self._caption_tokens = self._tokenize(source.captions) if tokenize_up_front else None
        self._images_on_device: Optional[torch.Tensor] = None
        self._loader: Optional[DataLoader] = None
        self._loader_batches: Optional[Iterator[Tuple[Any, ...]]] = None
        if all_images is not None:
            self._images_on_device = all_images.to(self.device)
            height, width = all_images.shape[-2:]
            self._constant_sizes = torch.tensor([[height, width]], dtype=torch.int64, device=self.device).repeat(
                self.local_batch_size, 1
            )
            self._order_epoch = -1
            self._order_on_device = torch.empty(0, dtype=torch.int64, device=self.device)
            if self._caption_tokens is not None:
                self._caption_tokens = self._caption_tokens.to(self.device)
        else:
            self._batch_sampler = _EndlessEpochBatches(num_images, batch_size, seed, self._rank_slice)
            self._loader = self._make_loader()

    def _make_loader(self) -> DataLoader:
        per_item_tokenize = self._tokenize if self._caption_tokens is None else None
        return DataLoader(
            _ImagesWithLabels(self.source, False, self._caption_tokens, per_item_tokenize),
            batch_sampler=self._batch_sampler,
            num_workers=self.num_workers,
            collate_fn=_collate_to_tuple,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    @property
    def skipped(self) -> int:
        """Undecodable images met so far (over all epochs, including before a resume)."""
        return self._skips.total

    @property
    def skipped_by_reason(self) -> Dict[str, int]:
        """{reason: count} of the undecodable images met by this process."""
        return dict(self._skips.by_reason)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> ImageBatch:
        if self._images_on_device is not None:
            return self._next_in_memory()
        return self._next_from_files()

    def _next_in_memory(self) -> ImageBatch:
        if self._order_epoch != self._epoch:
            self._order_host = epoch_order(self._num_images, self.seed, self._epoch)
            self._order_on_device = self._order_host.to(self.device)
            self._order_epoch = self._epoch
        indices = self._order_on_device[self._position : self._position + self.batch_size][self._rank_slice]
        images = self._images_on_device.index_select(0, indices)  # type: ignore[union-attr]
        captions = None
        if self.source.captions is not None:
            rows = self._order_host[self._position : self._position + self.batch_size][self._rank_slice].tolist()
            captions = [self.source.captions[i] for i in rows]
        tokens = None if self._caption_tokens is None else self._caption_tokens.index_select(0, indices)
        self._advance()
        return ImageBatch(images, self._constant_sizes, None, captions, tokens)

    def _next_from_files(self) -> ImageBatch:
        if self._loader_batches is None:
            self._batch_sampler.start_at(self._epoch, self._position)
            self._loader_batches = iter(self._loader)  # type: ignore[arg-type]
        while True:
            images, sizes, _, captions, tokens, origins, reasons = next(self._loader_batches)
            self._advance()
            if agreed_to_use(self._skips, self.local_batch_size, reasons, bool(sizes.shape[0]), self._world_size):
                break
        batch = ImageBatch(images, sizes, None, captions, tokens, origins).filled_to(self.local_batch_size)
        return batch.to(self.device, non_blocking=self.pin_memory)

    def _advance(self) -> None:
        self._position += self.batch_size
        if self._position + self.batch_size > self._num_images:  # drop_last: the tail is skipped
            self._epoch += 1
            self._position = 0

    def state_dict(self) -> Dict[str, object]:
        """{"epoch", "position" (samples of the epoch consumed), and the skip counts
        (:meth:`SkipCounter.state_dict`: "skipped" so far, "tried", "bad", "bad_in_a_row",
        "by_reason"): a resume stops where the uninterrupted run would}."""
        return {"epoch": self._epoch, "position": self._position, **self._skips.state_dict()}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue from ``state``: the next batch is the one that followed it when it was saved."""
        missing = [key for key in ("epoch", "position", "skipped") if key not in state]
        if missing:
            raise AnnobootError(
                f"batch stream state {dict(state)} lacks {', '.join(missing)}; the checkpoint is damaged"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self._num_images:
            raise AnnobootError(
                f"batch stream state epoch={epoch} position={position} does not fit {self.source.describe()}; "
                "was the checkpoint written with another data source or limit?"
            )
        self._epoch, self._position = epoch, position
        self._skips.load_state_dict(state)
        if self._position + self.batch_size > self._num_images:
            self._epoch, self._position = self._epoch + 1, 0
        self._loader_batches = None  # restart decoding from the restored point

    def close(self) -> None:
        """Stop decode workers now rather than at garbage collection; the stream stays usable."""
        if self._loader is not None:
            self._loader_batches = None
            self._loader = self._make_loader()


def iter_eval_batches(source: ImageSource, batch_size: int, num_workers: int = 0) -> Iterator[ImageBatch]:
    """Every image of ``source`` once, in index order, as CPU batches with labels.

    Yields ImageBatch: images (b, C, H, W) uint8, sizes (b, 2) int64, labels (b,) int64 taken
    from ``source.labels`` (None when the source has none). The last batch may be short.
    Undecodable files are left out together with their labels (a warning gives the count),
    so ``b`` can be below ``batch_size``; raises AnnobootError when nothing decodes.
    """
    if batch_size <= 0:
        raise AnnobootError(f"evaluation batch size must be positive, got {batch_size}")
    all_images = source.in_memory()
    labels = source.labels
    if all_images is not None:
        image_size = torch.tensor([all_images.shape[-2:]], dtype=torch.int64)
        for start in range(0, len(source), batch_size):
            stop = min(start + batch_size, len(source))
            yield ImageBatch(
                all_images[start:stop],
                image_size.repeat(stop - start, 1),
                None if labels is None else labels[start:stop],
                None if source.captions is None else list(source.captions[start:stop]),
            )
        return

    loader = DataLoader(
        _ImagesWithLabels(source, with_labels=True),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=_collate_to_tuple,
    )
    skipped = 0
    for images, sizes, batch_labels, batch_captions, _, origins, reasons in loader:
        skipped += sum(reasons.values())
        if sizes.shape[0]:
            yield ImageBatch(images, sizes, batch_labels, batch_captions, origins=origins)
    if skipped == len(source):
        raise AnnobootError(
            f"{source.describe()}: no image could be decoded; the files are unreadable "
            "(corrupt, truncated or not images): check the folder"
        )
    if skipped:
        logger.warning("%s: skipped %d undecodable image(s) of %d", source.name, skipped, len(source))
