"""annoboot.data.build_source and build_stream: the source a config names, and its errors."""

from __future__ import annotations

import pytest
from helpers import index_folder, needs_fashion_mnist, needs_fmnist

from annoboot.config import SourceConfig
from annoboot.data import BatchStream, FashionMNISTSource, ImageFolderSource, build_source, build_stream
from annoboot.errors import AnnobootError


def test_build_source_makes_an_image_folder(tmp_path):
    index_folder(tmp_path, 3)
    source = build_source(SourceConfig(kind="image_folder", root=str(tmp_path), limit=2, max_short_side=4))
    assert isinstance(source, ImageFolderSource) and len(source) == 2
    assert min(source[0].shape[1:]) == 4


def test_build_source_image_folder_requires_a_root():
    with pytest.raises(AnnobootError, match="root is required for image_folder"):
        build_source(SourceConfig(kind="image_folder"))


def test_build_source_rejects_an_unknown_kind():
    with pytest.raises(AnnobootError, match="fashion_mnist, image_folder"):
        build_source(SourceConfig(kind="cifar"))


@needs_fashion_mnist
def test_build_source_fashion_mnist_feeds_a_stream():
    source = build_source(SourceConfig(kind="fashion_mnist", split="test", limit=100))
    assert isinstance(source, FashionMNISTSource) and len(source) == 100
    batch = next(BatchStream(source, batch_size=32, seed=0))
    assert batch.images.shape == (32, 1, 28, 28) and batch.sizes.tolist() == [[28, 28]] * 32


@needs_fmnist
def test_an_uncaptioned_source_for_a_caption_method_is_a_clear_error():
    with pytest.raises(AnnobootError, match="trains on captions.*fashion_mnist"):
        build_stream(SourceConfig(kind="fashion_mnist", limit=100), 8, 0, "cpu", require_captions=True)
