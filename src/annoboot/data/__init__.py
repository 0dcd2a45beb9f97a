"""Image sources behind one interface, and the batches the trainer and the probes consume.

``build_source(cfg)`` turns a :class:`~annoboot.config.SourceConfig` into an
:class:`ImageSource`; :class:`BatchStream` serves endless shuffled training batches from it and
:func:`iter_eval_batches` one in-order labelled pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from annoboot.batch import ImageBatch
from annoboot.data.base import ImageSource
from annoboot.data.batching import Tokenize, pad_collate
# Each of these registers its kinds on import; the order is the order they are listed in messages.
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.image_folder import ImageFolderSource
from annoboot.data.shards import ShardStream
from annoboot.data.video import VideoFramesSource
from annoboot.data.scenes import SceneSource
from annoboot.data.boxed_scenes import BoxedSceneSource
from annoboot.data.captioned import CaptionedImagesSource
from annoboot.data.coco_boxes import CocoBoxSource
from annoboot.data.registry import SOURCE_REGISTRY
from annoboot.data.stream import BatchStream, iter_eval_batches
from annoboot.data.workers import decode_workers
from annoboot.errors import AnnobootError

if TYPE_CHECKING:  # config composes SourceConfig from the options the modules above register
    from annoboot.config import SourceConfig

SOURCE_KINDS = tuple(SOURCE_REGISTRY)


def build_source(cfg: SourceConfig) -> ImageSource:
    """The source ``cfg`` describes; AnnobootError for an unknown kind or a missing root."""
    if cfg.kind not in SOURCE_REGISTRY:
        raise AnnobootError(f"unknown data source kind '{cfg.kind}'; choose one of {', '.join(SOURCE_KINDS)}")
    source = SOURCE_REGISTRY[cfg.kind].build(cfg)
    source.read_timeout = cfg.read_timeout  # every source has the option; those reading files use it
    return source


def build_stream(
    cfg: SourceConfig,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    source: ImageSource | None = None,
    require_captions: bool = False,
    tokenize: Tokenize | None = None,
    decoding_streams: int = 1,
) -> "BatchStream | ShardStream":
    """The training stream for a source config: shards stream, everything else is indexed.

    ``source`` reuses an already built indexable source (coupled training: one source feeds
    the annotation and the bootstrap stream). ``require_captions``: the method reads the
    batches' captions; shard samples without one are skipped and counted, and an indexed
    source without captions is an error. ``tokenize``: the method's caption tokenizer, run
    where the stream decodes (its loader workers), so batches arrive with ``caption_tokens``.
    ``decoding_streams``: how many of this process's streams decode in workers; they share its
    cores when ``cfg.num_workers`` is None (:func:`decode_workers`).
    """
    if cfg.kind == "webdataset":
        if not cfg.root:
            raise AnnobootError("webdataset needs a shard pattern: data.<stream>.root=/path/train-{000000..000099}.tar")
        workers = decode_workers(cfg.num_workers, decoding_streams)
        return ShardStream(
            cfg.root, batch_size, seed, device, workers, rank, world_size, cfg.max_short_side,
            require_captions=require_captions, mix_weights=cfg.mix_weights, max_bad_fraction=cfg.max_bad_fraction,
            decode_on=cfg.decode_on, tokenize=tokenize, max_pixels=cfg.max_pixels, read_timeout=cfg.read_timeout,
        )
    source = source or build_source(cfg)
    if require_captions and source.captions is None:
        raise AnnobootError(
            f"this method trains on captions but {source.name} (kind={cfg.kind}) has none: use a captioned source "
            "(captioned_folder, openclipart, tuxpaint, fmnist_scenes) or webdataset shards with .txt members"
        )
    workers = decode_workers(cfg.num_workers, decoding_streams) if source.needs_decode_workers else 0
    return BatchStream(
        source, batch_size, seed, device=device, num_workers=workers, rank=rank, world_size=world_size,
        max_bad_fraction=cfg.max_bad_fraction, tokenize=tokenize,
    )


__all__ = [
    "BatchStream",
    "BoxedSceneSource",
    "CaptionedImagesSource",
    "CocoBoxSource",
    "FashionMNISTSource",
    "ImageBatch",
    "ImageFolderSource",
    "ImageSource",
    "SOURCE_KINDS",
    "SceneSource",
    "SOURCE_REGISTRY",
    "ShardStream",
    "VideoFramesSource",
    "build_source",
    "build_stream",
    "decode_workers",
    "iter_eval_batches",
    "pad_collate",
]
