"""Batches out of an :class:`ImageSource`: an endless, resumable training stream and an in-order
evaluation pass.

Training order is a pure function of (seed, epoch): epoch ``e`` visits
``torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))`` in full
batches, dropping the partial tail. The stream's state is therefore just (epoch, position), and
a resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from annoboot.batch import ImageBatch
from annoboot.data.base import ImageSource
from annoboot.data.batching import (
    LoaderItem,
    SkipCounter,
    Tokenize,
    agreed_to_use,
    collate_to_tuple,
    with_caption_tokens,
)
from annoboot.errors import AnnobootError

logger = logging.getLogger(__name__)

# Spreads nearby (seed, epoch) pairs apart so that seed s, epoch 1 is not seed s + 1, epoch 0.
SEED_STRIDE = 1_000_003

def epoch_order(num_images: int, seed: int, epoch: int) -> torch.Tensor:
    """(N,) int64 permutation of the source's indices visited in ``epoch``."""
    generator = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
    return torch.randperm(num_images, generator=generator)


class _ImagesWithLabels(Dataset):
    """The :class:`LoaderItem` of each image of a source, what pad_collate and skip_reasons
    consume; with the caption's token ids when given
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

    def __getitem__(self, index: int) -> LoaderItem:
        label = int(self.source.labels[index]) if self.with_labels else None  # type: ignore[index]
        caption = None if self.source.captions is None else self.source.captions[index]
        image, reason = self.source.load(index)
        item = LoaderItem(image, label, caption, reason)
        if self.caption_tokens is not None:
            return item._replace(caption_tokens=self.caption_tokens[index])
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
            collate_fn=collate_to_tuple,
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
        collate_fn=collate_to_tuple,
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
