"""WebDataset tar shards: web-scale image sets (as img2dataset writes them) streamed for training.

A shard holds samples ``<key>.jpg`` / ``.png`` / ``.webp`` (plus optional ``.txt``, ``.json``
...). Training resamples shards with replacement (``ResampledShards``), shuffles samples in a
buffer, decodes in CPU workers (decode only, short side capped) and batches there; crops happen
later on the device. Each rank and worker draws its own shard sequence from a seed.

Resume: an endless resampled stream has no position to return to. The stream records how many
batches it served and a *generation*; a resumed run starts the next generation, a fresh
resample from a seed derived from (seed, generation). Over many steps the data distribution is
the same as an uninterrupted run's; the exact sequence is not.
"""

from __future__ import annotations

import functools
import io
import logging
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import webdataset as wds
from torch.utils.data import DataLoader

from annoboot.data.base import ImageBatch
from annoboot.data.image_folder import decode_image
from annoboot.data.stream import _collate_to_tuple
from annoboot.errors import AnnobootError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_SEED_STRIDE = 1_000_003


def expand_shard_pattern(pattern: str) -> List[str]:
    """Brace patterns and ``::``-joined lists -> shard paths; AnnobootError when none exists."""
    urls: List[str] = []
    for part in pattern.split("::"):
        urls.extend(wds.shardlists.expand_urls(part))
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if not urls or len(missing) == len(urls):
        raise AnnobootError(f"no shard found for '{pattern}' (e.g. data.annotation.root=/data/shards/train-{{000000..000099}}.tar)")
    if missing:
        log.warning("%d of %d shards of '%s' are missing, e.g. %s; using the rest", len(missing), len(urls), pattern, missing[0])
    return [u for u in urls if u not in missing]


def sample_caption(sample: Dict[str, Any]) -> Optional[str]:
    """The sample's ``txt`` member (first line, stripped), or None when it has none or it is empty."""
    raw = sample.get("txt")
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    lines = text.strip().splitlines()
    return lines[0].strip() or None if lines else None


def decode_sample(
    sample: Dict[str, Any], max_short_side: int, require_caption: bool = False
) -> Tuple[Optional[torch.Tensor], None, Optional[str]]:
    """(image (3, H, W) uint8 or None, None, caption or None): image None for a sample without a
    decodable image, or without a caption when ``require_caption`` (image-text training)."""
    caption = sample_caption(sample)
    if require_caption and caption is None:
        log.debug("no caption in sample %s", sample.get("__key__"))
        return None, None, None
    for key in IMAGE_KEYS:
        if key in sample:
            try:
                return decode_image(io.BytesIO(sample[key]), max_short_side), None, caption
            except Exception:  # corrupt bytes: counted by the collate, never fatal
                log.debug("undecodable %s in sample %s", key, sample.get("__key__"))
                return None, None, caption
    return None, None, caption


class ShardStream:
    """Endless training batches from shards; the same interface as :class:`BatchStream`.

    ``batch_size`` is global; each of ``world_size`` ranks yields ``batch_size // world_size``
    images per batch (fewer when samples fail to decode; they are counted in ``skipped``).
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
    ):
        if batch_size % world_size:
            raise AnnobootError(f"batch size {batch_size} does not split evenly over {world_size} processes")
        self.urls = expand_shard_pattern(pattern)
        self.name = f"shards:{pattern}"
        self.local_batch_size = batch_size // world_size
        self.seed, self.rank = seed, rank
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.max_short_side = max_short_side
        self.shuffle_buffer = shuffle_buffer
        self.require_captions = require_captions  # samples without text are skipped and counted
        self.pin_memory = self.device.type == "cuda"
        self._generation = 0
        self._batches = 0
        self._skipped = 0
        self._iterator: Optional[Iterator] = None

    def _pipeline(self) -> wds.DataPipeline:
        seed = (self.seed * _SEED_STRIDE + self._generation) * 7919 + self.rank
        return wds.DataPipeline(
            # deterministic: the seed mixes in rank and worker id, not the clock
            wds.ResampledShards(self.urls, seed=seed, deterministic=True),
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), seed=seed),
            wds.map(functools.partial(decode_sample, max_short_side=self.max_short_side, require_caption=self.require_captions)),
            wds.batched(self.local_batch_size, collation_fn=_collate_to_tuple, partial=False),
        )

    @property
    def skipped(self) -> int:
        return self._skipped

    def __iter__(self) -> "ShardStream":
        return self

    def __next__(self) -> ImageBatch:
        if self._iterator is None:
            loader = DataLoader(self._pipeline(), batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
            self._iterator = iter(loader)
        images, sizes, _, captions, skipped = next(self._iterator)
        self._skipped += skipped
        self._batches += 1
        if images.shape[0] == 0:
            raise AnnobootError(f"{self.name}: no sample of a batch of {self.local_batch_size} could be decoded; check the shards")
        return ImageBatch(images, sizes, None, captions).to(self.device, non_blocking=self.pin_memory)

    def state_dict(self) -> Dict[str, int]:
        return {"generation": self._generation, "batches": self._batches, "skipped": self._skipped}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue with the next generation: a fresh resample, seeded from the recorded one."""
        self._generation = int(state["generation"]) + 1
        self._batches, self._skipped = int(state["batches"]), int(state["skipped"])
        self._iterator = None


def write_shards(
    files: List[Tuple[str, Optional[str]]], pattern: str, max_count: int = 10_000
) -> Tuple[int, List[str]]:
    """Write (image path, caption or None) pairs into tar shards named by ``pattern`` (e.g.
    ``out/train-%06d.tar``). Image bytes are stored as they are (no re-encoding); the key is the
    running index. Returns (samples written, shard paths)."""
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    written: List[str] = []
    count = 0
    with wds.ShardWriter(pattern, maxcount=max_count, verbose=0) as sink:
        for index, (path, caption) in enumerate(files):
            suffix = Path(path).suffix.lower().lstrip(".")
            suffix = "jpg" if suffix == "jpeg" else suffix
            sample = {"__key__": f"{index:09d}", suffix: Path(path).read_bytes()}
            if caption is not None:
                sample["txt"] = caption
            sink.write(sample)
            count += 1
            if sink.fname not in written:
                written.append(sink.fname)
    return count, written


def count_shard_samples(urls: List[str]) -> Dict[str, int]:
    """Samples and image members per shard pattern, reading only the tar headers."""
    samples, images = set(), 0
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                samples.add((url, key))
                images += ext.lower() in IMAGE_KEYS
    return {"shards": len(urls), "samples": len(samples), "image_members": images}
