"""annoboot.data.fashion_mnist: the real dataset, limits, and the errors of missing or damaged files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import needs_fashion_mnist

from annoboot.data import FashionMNISTSource
from annoboot.data.fashion_mnist import FASHION_MNIST_ROOT
from annoboot.errors import AnnobootError


@pytest.fixture(scope="module")
def fashion_test() -> FashionMNISTSource:
    return FashionMNISTSource(split="test")


@needs_fashion_mnist
def test_fashion_mnist_test_split_is_10k_balanced_28x28_uint8(fashion_test):
    images = fashion_test.in_memory()
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8
    assert fashion_test[0].shape == (1, 28, 28) and fashion_test[0].dtype == torch.uint8
    assert torch.equal(fashion_test[123], images[123])
    assert fashion_test.labels.shape == (10_000,) and fashion_test.labels.dtype == torch.int64
    assert fashion_test.labels.bincount().tolist() == [1000] * 10
    assert len(fashion_test.class_names) == 10 and fashion_test.class_names[9] == "Ankle boot"
    assert fashion_test.name == "fashion_mnist/test"
    assert 50 < images.float().mean() < 100  # real product photos on black, not blank or noise


@needs_fashion_mnist
def test_fashion_mnist_train_split_has_6000_images_per_class():
    source = FashionMNISTSource(split="train")
    assert len(source) == 60_000
    assert source.labels.min() == 0 and source.labels.max() == 9
    assert source.labels.bincount().tolist() == [6000] * 10


@needs_fashion_mnist
def test_fashion_mnist_limit_keeps_the_first_images(fashion_test):
    limited = FashionMNISTSource(split="test", limit=37)
    assert len(limited) == 37
    assert torch.equal(limited.in_memory(), fashion_test.in_memory()[:37])
    assert torch.equal(limited.labels, fashion_test.labels[:37])


def test_fashion_mnist_missing_folder_names_path_and_install_command(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(AnnobootError) as error:
        FashionMNISTSource(root=str(missing))
    assert str(missing) in str(error.value)
    assert "apt-get install dataset-fashion-mnist" in str(error.value)


def test_fashion_mnist_missing_file_is_named(tmp_path):
    with pytest.raises(AnnobootError, match="t10k-images-idx3-ubyte.gz"):
        FashionMNISTSource(root=str(tmp_path), split="test")


def test_fashion_mnist_unknown_split_lists_the_allowed_ones():
    with pytest.raises(AnnobootError, match="train, test"):
        FashionMNISTSource(split="validation")


@needs_fashion_mnist
def test_fashion_mnist_truncated_file_is_an_error_naming_it(tmp_path):
    shutil.copy(Path(FASHION_MNIST_ROOT) / "t10k-labels-idx1-ubyte.gz", tmp_path)
    images_gz = (Path(FASHION_MNIST_ROOT) / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(images_gz[: len(images_gz) // 3])
    with pytest.raises(AnnobootError, match="t10k-images-idx3-ubyte.gz.*corrupt or truncated"):
        FashionMNISTSource(root=str(tmp_path), split="test")


def test_fashion_mnist_wrong_magic_number_is_an_error_naming_the_file(tmp_path):
    labels = np.zeros(4, dtype=np.uint8)
    labels_idx = (0x801).to_bytes(4, "big") + (4).to_bytes(4, "big") + labels.tobytes()
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(labels_idx)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(labels_idx)  # a labels file where the images belong
    with pytest.raises(AnnobootError, match="t10k-images-idx3-ubyte.gz.*magic"):
        FashionMNISTSource(root=str(tmp_path), split="test")


def test_fashion_mnist_reads_a_well_formed_idx_pair(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.int64).astype(np.uint8).reshape(3, 28, 28)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"".join(n.to_bytes(4, "big") for n in (0x803, 3, 28, 28)) + images.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([4, 0, 9]))
    source = FashionMNISTSource(root=str(tmp_path), split="test")
    assert torch.equal(source.in_memory()[:, 0], torch.from_numpy(images))
    assert source.labels.tolist() == [4, 0, 9]
