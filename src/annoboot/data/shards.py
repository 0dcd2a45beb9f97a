"""WebDataset tar shards: web-scale image sets (as img2dataset writes them) streamed for training.

A shard holds samples ``<key>.jpg`` / ``.png`` / ``.webp`` / any other extension of
:data:`~annoboot.data.decode.IMAGE_EXTENSIONS` (plus optional ``.txt``, ``.json`` ...).
Training resamples shards with replacement (``ResampledShards``), shuffles samples in a buffer,
decodes in CPU workers (decode only, short side capped) and batches there; crops happen later on
the device. Each rank and worker draws its own shard sequence from a seed. A shard that cannot
be read is skipped with a warning; a shard set from which nothing can be read stops the run
(:class:`ShardFailures`).

Several sources: ``a/{000..099}.tar::b/{000..009}.tar`` pools the shards of both; with
``mix_weights`` each pattern is its own resampled stream and every sample comes from pattern i
with probability w_i / sum(w) (:class:`WeightedMix`), whatever the patterns' sizes.

Decoding on the device (``decode_on="device"``): workers read bytes and parse image headers
only. Plain JPEGs (RGB or grayscale, no EXIF rotation) travel as bytes and are decoded in one
batched ``torchvision.io.decode_jpeg`` call on the training device (nvjpeg on CUDA), then their
short side is capped there; every other image (PNG, WebP, CMYK or rotated JPEG) is decoded in
the worker as usual. A batch's JPEGs travel from the worker as one byte tensor plus their lengths
(a tensor per file would cost a shared-memory file descriptor each). A batched decode that fails
is retried in halves, and a JPEG the device decoder rejects alone goes to the CPU decoder. On CUDA
the decode runs on a stream of its own (:class:`DeviceDecoder`): the host waits for that stream's
earlier work, the stream waits for the training stream, and the training stream waits for the
decode and records its use of every decoded image, so no memory still in use is handed out.

Resume: an endless resampled stream has no position to return to. The stream records how many
batches it served and a *generation*; a resumed run starts the next generation, a fresh
resample from a seed derived from (seed, generation). Over many steps the data distribution is
the same as an uninterrupted run's; the exact sequence is not.

Beside it: shard_samples.py (a sample to a loader item, in the workers), shard_failures.py (the
failed shard reads of a reader), shard_files.py (writing and counting shards).
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from annoboot.batch import ImageBatch
from annoboot.data.batching import (
    LoaderItem,
    SkipCounter,
    Tokenize,
    agreed_to_use,
    collate_to_tuple,
    pad_collate,
    with_caption_tokens,
)
from annoboot.data.decode import MAX_IMAGE_PIXELS
from annoboot.data.device_decode import DeviceDecoder
from annoboot.data.registry import register_source
from annoboot.data.shard_failures import ShardFailures, UnreadableShards
from annoboot.data.shard_samples import collate_encoded, decode_sample, read_sample, split_jpegs
from annoboot.data.stream import SEED_STRIDE
from annoboot.errors import AnnobootError
from annoboot.option_ranges import NON_NEGATIVE, option

log = logging.getLogger(__name__)

def check_shard_options(key: str, root: Optional[str], decode_on: str, mix_weights: Optional[Sequence[float]]) -> None:
    """AnnobootError naming ``<key>.decode_on`` unless it is cpu or device, or ``<key>.mix_weights``
    unless the weights fit the '::'-joined patterns of ``root``: the one check of both, run when
    a config loads (:class:`ShardOptions`) and when a :class:`ShardStream` is built directly."""
    if decode_on not in ("cpu", "device"):
        raise AnnobootError(f"bad config: key '{key}.decode_on' is '{decode_on}'; choose one of cpu, device")
    if mix_weights is None:
        return
    weights, patterns = list(mix_weights), (root or "").split("::")
    if len(weights) != len(patterns):
        raise AnnobootError(
            f"bad config: key '{key}.mix_weights' has {len(weights)} weight(s) but the root joins {len(patterns)} "
            "shard pattern(s) with '::'; give one weight per pattern"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise AnnobootError(f"bad config: key '{key}.mix_weights' must be >= 0 with a positive sum, got {weights}")


@dataclass
class ShardOptions:
    """The options of kind webdataset (``data.<stream>.mix_weights``, ``.decode_on``)."""

    # One weight per '::'-joined pattern; each pattern is then its own source and a sample comes
    # from pattern i with probability w_i / sum(w). None: all shards pooled.
    mix_weights: Optional[List[float]] = option(None, NON_NEGATIVE)
    # cpu (workers decode) | device (workers read bytes; JPEGs are decoded in a batch on the
    # training device with torchvision/nvjpeg; other formats in the workers).
    decode_on: str = "cpu"

    @staticmethod
    def check(src, key: str, selected: bool) -> None:
        check_shard_options(key, src.root, src.decode_on, src.mix_weights)
        if not selected and (src.decode_on != "cpu" or src.mix_weights is not None):
            raise AnnobootError(
                f"bad config: '{key}.decode_on' and '{key}.mix_weights' apply to kind=webdataset only, not {src.kind}"
            )


@register_source("webdataset", options=ShardOptions)
def _shards_are_streamed(cfg):
    raise AnnobootError("webdataset shards are streamed for training only; evaluate on an indexable source")


def expand_shard_pattern(pattern: str) -> List[str]:
    """Brace patterns and ``::``-joined lists -> shard paths; AnnobootError when none exists.
    Paths that are not regular files (missing, folders, FIFOs, whose open would block) are left
    out with a warning."""
    urls: List[str] = []
    for part in pattern.split("::"):
        urls.extend(wds.shardlists.expand_urls(part))
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if not urls or len(missing) == len(urls):
        raise AnnobootError(f"no shard found for '{pattern}' (e.g. data.annotation.root=/data/shards/train-{{000000..000099}}.tar)")
    if missing:
        log.warning("%d of %d shards of '%s' are missing, e.g. %s; using the rest", len(missing), len(urls), pattern, missing[0])
    return [u for u in urls if u not in missing]


class WeightedMix(IterableDataset):
    """Endless samples from several endless sample streams: each sample comes from stream i with
    probability ``weights[i] / sum(weights)``. The draws are seeded by ``seed`` and the worker's
    rank and id (``wds.utils.pytorch_worker_seed``), so they repeat run to run; ``wds.RandomMix``
    would draw from the unseeded global ``random``."""

    def __init__(self, streams: List[IterableDataset], weights: Sequence[float], seed: int):
        self.streams = streams
        self.weights = [float(w) for w in weights]
        self.seed = seed

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        rng = random.Random(wds.utils.make_seed(wds.utils.pytorch_worker_seed(), self.seed))
        iterators = [iter(stream) for stream in self.streams]  # lazy: an unused stream reads nothing
        choices = range(len(iterators))
        while True:
            yield next(iterators[rng.choices(choices, weights=self.weights)[0]])


class ShardStream:
    """Endless training batches from shards; the same interface as :class:`BatchStream`.

    ``batch_size`` is global; each of ``world_size`` ranks yields ``batch_size // world_size``
    images per batch (samples that fail to decode are replaced by repeats of decoded ones of the
    same batch; they are counted in ``skipped``, per reason in the logs, and more than ``max_bad_fraction`` of them stops the run).
    ``mix_weights``: one weight per '::'-joined pattern, mixing them as separate sources.
    ``decode_on``: "cpu" (workers decode) or "device" (JPEGs decoded on ``device``, see above).
    ``tokenize``: the workers tokenise each sample's caption; batches carry ``caption_tokens``.
    """

    def __init__(
        self,
        pattern: str,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        num_workers: int = 4,
        rank: int = 0,
        world_size: int = 1,
        max_short_side: int = 256,
        shuffle_buffer: int = 2000,
        require_captions: bool = False,
        mix_weights: Optional[Sequence[float]] = None,
        max_bad_fraction: float = 0.5,
        decode_on: str = "cpu",
        tokenize: Optional[Tokenize] = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
        read_timeout: float = 0.0,
    ):
        if batch_size % world_size:
            raise AnnobootError(f"batch size {batch_size} does not split evenly over {world_size} processes")
        check_shard_options("data.<stream>", pattern, decode_on, mix_weights)
        if mix_weights is not None:
            self.source_urls = [expand_shard_pattern(part) for part in pattern.split("::")]
            self.urls = [url for urls in self.source_urls for url in urls]
        else:
            self.urls = expand_shard_pattern(pattern)
        self.mix_weights = None if mix_weights is None else [float(w) for w in mix_weights]
        self.decode_on = decode_on
        self.pattern = pattern
        self.name = f"shards:{pattern}"
        self.local_batch_size = batch_size // world_size
        self._world_size = world_size
        self.seed, self.rank = seed, rank
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.max_short_side = max_short_side
        self.max_pixels = max_pixels
        self.read_timeout = read_timeout
        self.shuffle_buffer = shuffle_buffer
        self.require_captions = require_captions  # samples without text are skipped and counted
        self.tokenize = tokenize
        # Device decoding reads bytes into pageable memory: decode_jpeg wants CPU tensors anyway.
        self.pin_memory = self.device.type == "cuda" and decode_on == "cpu"
        self._generation = 0
        self._batches = 0
        self._skips = SkipCounter(self.name, f"'{pattern}'", max_bad_fraction)
        self._decoder = DeviceDecoder(self.device)
        self._iterator: Optional[Iterator] = None

    def _pipeline(self) -> wds.DataPipeline:
        seed = (self.seed * SEED_STRIDE + self._generation) * 7919 + self.rank
        if self.mix_weights is None:
            # deterministic: the seed mixes in rank and worker id, not the clock
            samples = [
                wds.ResampledShards(self.urls, seed=seed, deterministic=True),
                ShardFailures(self.pattern, len(self.urls), read_timeout=self.read_timeout).samples,
            ]
        else:
            streams = [
                wds.DataPipeline(
                    wds.ResampledShards(urls, seed=wds.utils.make_seed(seed, i), deterministic=True),
                    ShardFailures(part, len(urls), read_timeout=self.read_timeout).samples,
                )
                for i, (part, urls) in enumerate(zip(self.pattern.split("::"), self.source_urls))
            ]
            samples = [WeightedMix(streams, self.mix_weights, seed)]
        if self.decode_on == "device":
            per_sample, collate = read_sample, collate_encoded
        else:
            per_sample, collate = decode_sample, collate_to_tuple
        stages = [
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), seed=seed),
            wds.map(
                functools.partial(per_sample, max_short_side=self.max_short_side, require_caption=self.require_captions,
                                  max_pixels=self.max_pixels)
            ),
        ]
        if self.tokenize is not None:  # in the workers, not on the training thread
            stages.append(wds.map(functools.partial(with_caption_tokens, tokenize=self.tokenize)))
        stages.append(wds.batched(self.local_batch_size, collation_fn=collate, partial=False))
        return wds.DataPipeline(*samples, *stages)

    @property
    def skipped(self) -> int:
        """Unusable samples met so far (including before a resume)."""
        return self._skips.total

    @property
    def skipped_by_reason(self) -> Dict[str, int]:
        """{reason: count} of the unusable samples met by this process."""
        return dict(self._skips.by_reason)

    def __iter__(self) -> "ShardStream":
        return self

    def __next__(self) -> ImageBatch:
        if self._iterator is None:
            loader = DataLoader(self._pipeline(), batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
            self._iterator = iter(loader)
        while True:
            try:
                encoded = next(self._iterator)
            except AnnobootError as exc:  # unreadable shards, a read that timed out
                # Workers stop now, not at garbage collection; a later call starts afresh rather
                # than re-raising a dead worker's error.
                self.close()
                if isinstance(exc, UnreadableShards):
                    raise AnnobootError(exc.plain_message) from None
                raise
            if self.decode_on == "device":
                batch, reasons = self._decode_on_device(*encoded)
            else:
                images, sizes, _, captions, tokens, origins, reasons = encoded
                batch = ImageBatch(images, sizes, None, captions, tokens, origins)
            self._batches += 1
            if agreed_to_use(self._skips, self.local_batch_size, reasons, bool(len(batch)), self._world_size):
                return batch.filled_to(self.local_batch_size).to(self.device, non_blocking=self.pin_memory)

    def _decode_on_device(
        self,
        pixels: List[Any],
        jpeg_bytes: torch.Tensor,
        jpeg_lengths: torch.Tensor,
        captions: List[Optional[str]],
        tokens: Optional[torch.Tensor],
        reasons: Dict[str, int],
    ) -> Tuple[ImageBatch, Dict[str, int]]:
        """A worker's encoded batch (see :func:`~annoboot.data.shard_samples.collate_encoded`) -> (padded ImageBatch on the
        device, all skip reasons)."""
        jpegs = split_jpegs(jpeg_bytes, jpeg_lengths)
        jpeg_rows = [i for i, jpeg in enumerate(jpegs) if jpeg is not None]
        images: List[Optional[torch.Tensor]] = [None if p is None else p.to(self.device) for p in pixels]
        reasons = dict(reasons)
        decoded = self._decoder.decode([jpegs[i] for i in jpeg_rows], self.max_short_side)
        for row, (image, reason) in zip(jpeg_rows, decoded):
            images[row] = image
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
        token_rows = [None] * len(images) if tokens is None else list(tokens)
        items = [LoaderItem(image, None, caption, None, row) for image, caption, row in zip(images, captions, token_rows)]
        batch, _ = pad_collate(items)
        return batch, reasons

    def close(self) -> None:
        """Stop the loader's workers now; a later batch starts the stream's generation afresh."""
        self._iterator = None

    def state_dict(self) -> Dict[str, object]:
        return {"generation": self._generation, "batches": self._batches, **self._skips.state_dict()}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue with the next generation: a fresh resample, seeded from the recorded one."""
        self._generation = int(state["generation"]) + 1
        self._batches = int(state["batches"])
        self._skips.load_state_dict(state)
        self._iterator = None


