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
"""

from __future__ import annotations

import functools
import io
import logging
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from annoboot.batch import ImageBatch
from annoboot.data.batching import (
    SkipCounter,
    Tokenize,
    agreed_to_use,
    collate_to_tuple,
    pad_collate,
    skip_reasons,
    with_caption_tokens,
)
from annoboot.data.captions import sample_caption
from annoboot.data.decode import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    decode_image,
    exif_orientation,
    failure_reason,
    open_image,
)
from annoboot.data.device_decode import DeviceDecoder
from annoboot.data.registry import register_source
from annoboot.data.stream import SEED_STRIDE
from annoboot.data.timed_reads import ReadTimedOut, open_timed
from annoboot.errors import AnnobootError
from annoboot.option_ranges import NON_NEGATIVE, option

log = logging.getLogger(__name__)

# Every extension the folder source (and so ``data write-shards``) takes is an image member.
IMAGE_KEYS = tuple(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)

# A reader stops after this many shard reads in a row that yielded no sample (see ShardFailures):
# with even 80% of a set's shards broken, 50 in a row happen once in 10^5 reads.
MAX_SHARD_FAILURES_IN_A_ROW = 50


def check_mix_weights(key: str, root: Optional[str], weights: List[float]) -> None:
    """AnnobootError naming ``key`` unless ``weights`` fit the '::'-joined patterns of ``root``."""
    patterns = (root or "").split("::")
    if len(weights) != len(patterns):
        raise AnnobootError(
            f"bad config: key '{key}' has {len(weights)} weight(s) but the root joins {len(patterns)} "
            "shard pattern(s) with '::'; give one weight per pattern"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise AnnobootError(f"bad config: key '{key}' must be >= 0 with a positive sum, got {list(weights)}")


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
        if src.decode_on not in ("cpu", "device"):
            raise AnnobootError(f"bad config: key '{key}.decode_on' is '{src.decode_on}'; choose one of cpu, device")
        if not selected and (src.decode_on != "cpu" or src.mix_weights is not None):
            raise AnnobootError(
                f"bad config: '{key}.decode_on' and '{key}.mix_weights' apply to kind=webdataset only, not {src.kind}"
            )
        if src.mix_weights is not None:
            check_mix_weights(f"{key}.mix_weights", src.root, src.mix_weights)


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


def decode_sample(
    sample: Dict[str, Any], max_short_side: int, require_caption: bool = False, max_pixels: int = MAX_IMAGE_PIXELS
) -> Tuple[Optional[torch.Tensor], None, Optional[str], Optional[str]]:
    """(image (3, H, W) uint8 or None, None, caption or None, skip reason or None): image None
    for a sample without a decodable image, or without a caption when ``require_caption``
    (image-text training); the reason then says which."""
    caption = sample_caption(sample)
    if require_caption and caption is None:
        log.debug("no caption in sample %s", sample.get("__key__"))
        return None, None, None, "no caption"
    for key in IMAGE_KEYS:
        if key in sample:
            try:
                return decode_image(io.BytesIO(sample[key]), max_short_side, max_pixels), None, caption, None
            except Exception as exc:  # corrupt bytes: counted by the collate, never fatal
                log.debug("undecodable %s in sample %s", key, sample.get("__key__"))
                return None, None, caption, failure_reason(exc, len(sample[key]))
    return None, None, caption, "no image member"


def read_sample(
    sample: Dict[str, Any], max_short_side: int, require_caption: bool = False, max_pixels: int = MAX_IMAGE_PIXELS
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[str], Optional[str]]:
    """Worker side of device decoding: (pixels, jpeg, caption, skip reason).

    A plain JPEG (RGB or grayscale, no EXIF rotation) comes back as ``jpeg``, its bytes as a
    (n,) uint8 tensor, for the batched device decoder; any other image is decoded here as
    ``pixels`` (3, H, W) uint8, short side capped. Both None: skipped, for ``reason``.
    Only the header is parsed for a JPEG (format, mode, EXIF; and the pixel cap of
    :func:`~annoboot.data.decode.open_image`).
    """
    caption = sample_caption(sample)
    if require_caption and caption is None:
        return None, None, None, "no caption"
    key = next((key for key in IMAGE_KEYS if key in sample), None)
    if key is None:
        return None, None, caption, "no image member"
    data = sample[key]
    try:
        with open_image(io.BytesIO(data), max_pixels) as header:  # and the pixel cap: the device decoder has none
            plain_jpeg = header.format == "JPEG" and header.mode in ("RGB", "L") and exif_orientation(header) == 1
        if plain_jpeg:
            return None, torch.frombuffer(bytearray(data), dtype=torch.uint8), caption, None
        return decode_image(io.BytesIO(data), max_short_side, max_pixels), None, caption, None
    except Exception as exc:  # unreadable header or pixels: counted, never fatal
        log.debug("undecodable %s in sample %s", key, sample.get("__key__"))
        return None, None, caption, failure_reason(exc, len(data))


def _collate_encoded(
    items: Sequence[Tuple[Any, ...]],
) -> Tuple[List[Any], torch.Tensor, torch.Tensor, List[Optional[str]], Optional[torch.Tensor], Dict[str, int]]:
    """read_sample outputs -> (pixels list, JPEG bytes (N,) uint8, JPEG lengths (B,) int64,
    captions, caption tokens (B, L) or None, {reason: count} of the samples that are neither), in
    sample order; the pixels list holds None where a sample has none, a length is 0 where a
    sample has no JPEG (a JPEG is never empty). The batch's JPEGs are concatenated and its tokens
    stacked because each tensor in a list travels from the worker as its own shared-memory file:
    one per JPEG runs out of file descriptors at batches of a few hundred. :func:`split_jpegs`
    takes them apart again."""
    skipped = [(None, None, None, reason) for pixels, jpeg, _, reason, *_ in items if pixels is None and jpeg is None]
    tokens = torch.stack([i[4] for i in items]) if items and len(items[0]) > 4 else None
    jpegs = [i[1] for i in items if i[1] is not None]
    jpeg_bytes = torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8)
    jpeg_lengths = torch.tensor([0 if i[1] is None else len(i[1]) for i in items], dtype=torch.int64)
    return [i[0] for i in items], jpeg_bytes, jpeg_lengths, [i[2] for i in items], tokens, skip_reasons(skipped)


def split_jpegs(jpeg_bytes: torch.Tensor, jpeg_lengths: torch.Tensor) -> List[Optional[torch.Tensor]]:
    """(N,) concatenated JPEG bytes and (B,) lengths (from :func:`_collate_encoded`) -> each
    sample's JPEG as a view of ``jpeg_bytes`` (no copy), None where its length is 0."""
    parts = torch.split(jpeg_bytes, jpeg_lengths.tolist())
    return [part if len(part) else None for part in parts]


class UnreadableShards(AnnobootError):
    """A shard set from which nothing could be read (raised in the reader, often a worker)."""


class ShardFailures:
    """The shard reads of one reader (a DataLoader worker, or the process) that failed, and
    webdataset's exception handler for them: webdataset's own handlers sleep 0.5 s per error
    and resample a set whose every shard is broken forever.

    A shard read fails when the shard cannot be opened or read (garbage, truncated, empty), or
    ends without a member. It is skipped with a warning (at 1, 2, 4, ... failures). Failures
    that yield no member, with none read in between, stop the reader with
    :class:`UnreadableShards` naming ``name`` and the last reason, once every one of the
    ``num_shards`` shards has failed so, or :data:`MAX_SHARD_FAILURES_IN_A_ROW` did. A shard that
    yields samples before it fails never stops the reader. ``stop=False`` neither warns nor
    stops: ``data inspect`` names the unreadable shards itself (:func:`count_shard_samples`).

    Use it through :meth:`samples`, which tracks the shard being read."""

    def __init__(self, name: str, num_shards: int, stop: bool = True, read_timeout: float = 0.0):
        self.name, self.num_shards, self.stop = name, num_shards, stop
        self.read_timeout = read_timeout  # seconds a read of a local shard may take (0: no limit)
        self.failures = 0
        self._url: Optional[str] = None
        self._members = 0  # of the shard being read
        self._failed = False  # the shard being read has failed (counted once)
        self._empty_in_a_row = 0  # failed reads without a member since the last member
        self._empty_shards: set = set()
        self._log_at = 1

    def samples(self, shards: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        """webdataset's ``tarfile_to_samples`` on ``shards`` (dicts with a ``url``), watched."""
        opened = self._open_timed(self._watch_shards(shards)) if self.read_timeout > 0 else url_opener(
            self._watch_shards(shards), handler=self)
        files = tar_file_expander(opened, handler=self)
        return group_by_keys(self._watch_members(files), handler=self)

    def _open_timed(self, shards: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        """webdataset's url_opener, local files read with the read timeout (others as it reads them)."""
        for shard in shards:
            url = shard["url"]
            try:
                local = "://" not in url and not url.startswith("pipe:")
                stream = open_timed(url, self.read_timeout) if local else gopen(url)
            except Exception as exc:
                exc.args = exc.args + (url,)
                if self(exc):
                    continue
                break
            yield {**shard, "stream": stream}

    def _watch_shards(self, shards: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for shard in shards:
            self._url, self._members, self._failed = shard["url"], 0, False
            yield shard

    def _watch_members(self, files: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for file in files:
            if file:
                self._members += 1
                self._empty_in_a_row = 0
                self._empty_shards.clear()
            elif not self._members and not self._failed:  # webdataset's end-of-shard marker
                self._fail("no sample in the shard")
            yield file

    def __call__(self, exc: Exception) -> bool:
        """webdataset's handler: count the shard as failed and go on with the next one (a read
        that timed out stops the reader: the next shard's would hang the same way)."""
        if isinstance(exc, ReadTimedOut):
            raise ReadTimedOut(exc.args[0]) from None  # webdataset appended the URL to its args
        self._fail(failure_reason(exc, _local_size(self._url)))
        return True

    def _fail(self, reason: str) -> None:
        if self._failed:  # later errors of one shard read are the same failure
            return
        self._failed = True
        self.failures += 1
        if self.stop and self.failures >= self._log_at:
            log.warning(
                "shards '%s': skipped unreadable shard %s (%s); %d unreadable shard read(s) so far in this reader",
                self.name, self._url, reason, self.failures,
            )
            self._log_at = 2 * self.failures
        if self._members:  # it yielded samples: a damaged shard in a working set
            return
        self._empty_in_a_row += 1
        self._empty_shards.add(self._url)
        every_shard = len(self._empty_shards) >= self.num_shards
        if self.stop and (every_shard or self._empty_in_a_row >= MAX_SHARD_FAILURES_IN_A_ROW):
            which = f"all {self.num_shards} shard(s)" if every_shard else f"{self._empty_in_a_row} shard reads in a row"
            raise UnreadableShards(
                f"shards '{self.name}': no sample could be read from {which} (last: {self._url}: {reason}); "
                f"check them with `annoboot data inspect '{self.name}'`"
            )


def _local_size(url: Optional[str]) -> int:
    """Size in bytes of a local shard; -1 when unknown (remote, or gone)."""
    try:
        return os.path.getsize(url) if url and "://" not in url else -1
    except OSError:
        return -1


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
        if decode_on not in ("cpu", "device"):
            raise AnnobootError(f"decode_on must be cpu or device, got '{decode_on}' (data.<stream>.decode_on)")
        if mix_weights is not None:
            check_mix_weights("data.<stream>.mix_weights", pattern, list(mix_weights))
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
            per_sample, collate = read_sample, _collate_encoded
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
            except UnreadableShards as exc:
                self._iterator = None  # a later call starts afresh rather than re-raising a dead worker's error
                raise AnnobootError(exc.plain_message) from None
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
        """A worker's encoded batch (see :func:`_collate_encoded`) -> (padded ImageBatch on the
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
        items = [(image, None, caption, None, row) for image, caption, row in zip(images, captions, token_rows)]
        batch, _ = pad_collate(items)
        return batch, reasons

    def state_dict(self) -> Dict[str, object]:
        return {"generation": self._generation, "batches": self._batches, **self._skips.state_dict()}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue with the next generation: a fresh resample, seeded from the recorded one."""
        self._generation = int(state["generation"]) + 1
        self._batches = int(state["batches"])
        self._skips.load_state_dict(state)
        self._iterator = None


def write_shards(
    files: List[Tuple[str, Optional[str]]], pattern: str, max_count: int = 10_000
) -> Tuple[int, List[str], int]:
    """Write (image path, caption or None) pairs into tar shards named by ``pattern`` (e.g.
    ``out/train-%06d.tar``). Image bytes are stored as they are (no re-encoding) under their
    extension (every one is in :data:`IMAGE_KEYS`); the key is the running index. Returns
    (samples written, shard paths, files that could not be read and were left out)."""
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    written: List[str] = []
    count = unreadable = 0
    with wds.ShardWriter(pattern, maxcount=max_count, verbose=0) as sink:
        for index, (path, caption) in enumerate(files):
            suffix = Path(path).suffix.lower().lstrip(".")
            suffix = "jpg" if suffix == "jpeg" else suffix
            try:
                data = Path(path).read_bytes()
            except OSError as exc:  # gone, or unreadable since it was listed
                log.warning("leaving out unreadable %s: %s", path, exc)
                unreadable += 1
                continue
            sample = {"__key__": f"{index:09d}", suffix: data}
            if caption is not None:
                sample["txt"] = caption
            sink.write(sample)
            count += 1
            if sink.fname not in written:
                written.append(sink.fname)
    return count, written, unreadable


def count_shard_samples(urls: List[str]) -> Dict[str, Any]:
    """Samples and image members of the shards, reading only the tar headers. A shard that
    cannot be read is counted as far as it could be, and listed in ``unreadable_shards``
    ({url: :func:`failure_reason`})."""
    samples, images = set(), 0
    unreadable: Dict[str, str] = {}
    for url in urls:
        try:
            # "r:" for plain tars: "r:*" would name every compression it tried in its error
            with tarfile.open(url, "r:" if url.endswith(".tar") else "r:*") as tar:
                for member in tar:
                    key, _, ext = member.name.rpartition(".")
                    samples.add((url, key))
                    images += ext.lower() in IMAGE_KEYS
        except (tarfile.TarError, OSError, EOFError) as exc:
            unreadable[url] = failure_reason(exc, _local_size(url))
    return {"shards": len(urls), "samples": len(samples), "image_members": images, "unreadable_shards": unreadable}
