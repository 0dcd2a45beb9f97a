"""Image sources behind one interface, and the batches the trainer and the probes consume.

``build_source(cfg)`` turns a :class:`~annoboot.config.SourceConfig` into an
:class:`ImageSource`; :class:`BatchStream` serves endless shuffled training batches from it and
:func:`iter_eval_batches` one in-order labelled pass.
"""

from __future__ import annotations

from annoboot.config import SourceConfig
from annoboot.data.base import ImageBatch, ImageSource
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.image_folder import ImageFolderSource
from annoboot.data.stream import BatchStream, iter_eval_batches, pad_collate
from annoboot.errors import AnnobootError

SOURCE_KINDS = ("fashion_mnist", "image_folder")


def build_source(cfg: SourceConfig) -> ImageSource:
    """The source ``cfg`` describes; AnnobootError for an unknown kind or a missing root."""
    if cfg.kind == "fashion_mnist":
        return FashionMNISTSource(root=cfg.root, split=cfg.split, limit=cfg.limit)
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
    raise AnnobootError(f"unknown data source kind '{cfg.kind}'; choose one of {', '.join(SOURCE_KINDS)}")


__all__ = [
    "BatchStream",
    "FashionMNISTSource",
    "ImageBatch",
    "ImageFolderSource",
    "ImageSource",
    "SOURCE_KINDS",
    "build_source",
    "iter_eval_batches",
    "pad_collate",
]
