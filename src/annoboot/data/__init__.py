"""Image sources behind one interface, and the batches the trainer and the probes consume.

``build_source(cfg)`` turns a :class:`~annoboot.config.SourceConfig` into an
:class:`ImageSource`; :class:`BatchStream` serves endless shuffled training batches from it and
:func:`iter_eval_batches` one in-order labelled pass.
"""

from __future__ import annotations

import torch

from annoboot.batch import ImageBatch
from annoboot.config import SourceConfig
from annoboot.data.base import ImageSource
from annoboot.data.captioned import CAPTIONED_SOURCES, CaptionedImagesSource
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.image_folder import ImageFolderSource
from annoboot.data.scenes import SceneSource
from annoboot.data.shards import ShardStream
from annoboot.data.stream import BatchStream, Tokenize, iter_eval_batches, pad_collate
from annoboot.data.workers import decode_workers
from annoboot.errors import AnnobootError

SOURCE_KINDS = ("fashion_mnist", "image_folder", "webdataset", "video_folder", "fmnist_scenes", *CAPTIONED_SOURCES)


def build_source(cfg: SourceConfig) -> ImageSource:
    """The source ``cfg`` describes; AnnobootError for an unknown kind or a missing root."""
    if cfg.kind == "fashion_mnist":
        return FashionMNISTSource(root=cfg.root, split=cfg.split, limit=cfg.limit)
    if cfg.kind == "fmnist_scenes":
        return SceneSource(cfg.scenes, split=cfg.split, root=cfg.root, limit=cfg.limit)
    if cfg.kind == "image_folder":
        if not cfg.root:
            raise AnnobootError(
                "data root is required for image_folder: set data.annotation.root=<dir> "
                "(likewise data.bootstrap.root, eval.train.root, eval.test.root for those sources)"
            )
        return ImageFolderSource(
            cfg.root,
            labels_from_subfolders=cfg.labels_from_subfolders,
            limit=cfg.limit,
            max_short_side=cfg.max_short_side,
        )
    if cfg.kind == "video_folder":
        if not cfg.root:
            raise AnnobootError("video_folder needs data.<stream>.root=<folder of videos or one video file>")
        from annoboot.data.video import VideoFramesSource  # PyAV is only needed for videos

        return VideoFramesSource(cfg.root, stride=cfg.frame_stride, limit=cfg.limit, max_short_side=cfg.max_short_side)
    if cfg.kind in CAPTIONED_SOURCES:
        return CAPTIONED_SOURCES[cfg.kind](cfg.root, split=cfg.split, limit=cfg.limit, max_short_side=cfg.max_short_side)
    if cfg.kind == "webdataset":
        raise AnnobootError("webdataset shards are streamed for training only; evaluate on an indexable source")
    raise AnnobootError(f"unknown data source kind '{cfg.kind}'; choose one of {', '.join(SOURCE_KINDS)}")


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
            decode_on=cfg.decode_on, tokenize=tokenize,
        )
    source = source or build_source(cfg)
    if require_captions and source.captions is None:
        raise AnnobootError(
            f"this method trains on captions but {source.name} (kind={cfg.kind}) has none: use a captioned source "
            "(captioned_folder, openclipart, tuxpaint, fmnist_scenes) or webdataset shards with .txt members"
        )
    if cfg.decode_on != "cpu" or cfg.mix_weights is not None:
        raise AnnobootError(f"decode_on and mix_weights apply to webdataset shards only, not to kind={cfg.kind}")
    workers = decode_workers(cfg.num_workers, decoding_streams) if source.needs_decode_workers else 0
    return BatchStream(
        source, batch_size, seed, device=device, num_workers=workers, rank=rank, world_size=world_size,
        max_bad_fraction=cfg.max_bad_fraction, tokenize=tokenize,
    )


__all__ = [
    "BatchStream",
    "CaptionedImagesSource",
    "FashionMNISTSource",
    "ImageBatch",
    "ImageFolderSource",
    "ImageSource",
    "SOURCE_KINDS",
    "SceneSource",
    "ShardStream",
    "build_source",
    "build_stream",
    "decode_workers",
    "iter_eval_batches",
    "pad_collate",
]
