"""Fashion-MNIST read from its original IDX ``.gz`` files, held whole in memory.

The Debian package ``dataset-fashion-mnist`` installs the four files under
``/usr/share/datasets/fashion-mnist``. The whole set is 47 MB as uint8, so it is kept as one
tensor that the trainer can move to the GPU once.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from annoboot.data.base import InMemoryImageSource
from annoboot.data.registry import register_source
from annoboot.errors import AnnobootError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # the Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES: List[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

# File stem of each split in the original distribution.
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# IDX magic numbers: 0x08 = unsigned byte data, last byte = number of dimensions.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
_SIDE = 28


def _install_hint(root: Path) -> str:
    return (
        f"Fashion-MNIST not found at {root}: apt-get install dataset-fashion-mnist, "
        f"or pass data.annotation.root=<dir> (a folder holding train-images-idx3-ubyte.gz, "
        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)"
    )


def _read_writable(stream, size: int, chunk: int = 1 << 20) -> memoryview:
    """Up to ``size`` bytes of ``stream`` in a writable buffer (fewer at end of file): NumPy and
    torch views of it need no copy. Read in chunks, since reading it whole would hold a second,
    read-only copy of the data while it is copied in."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        count = stream.readinto(view[filled : filled + chunk])
        if not count:
            break
        filled += count
    return view[:filled]


def _read_idx(path: Path, magic: int, limit: Optional[int]) -> Tuple[Tuple[int, ...], np.ndarray]:
    """Read an IDX file of uint8 data; returns (dims as stored in the header, data (n, *dims[1:])).

    With ``limit`` only the first ``limit`` records are decompressed (quick smoke runs); the
    header's record count is still returned in full so the caller can cross-check files.
    """
    broken = f"{path} is corrupt or truncated; re-install it (apt-get install --reinstall dataset-fashion-mnist)"
    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(4)
            if len(header) < 4 or int.from_bytes(header, "big") != magic:
                raise AnnobootError(f"{broken}: bad IDX magic number (expected 0x{magic:08x})")
            ndim = magic & 0xFF
            raw_dims = stream.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise AnnobootError(f"{broken}: header ends early")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            count = dims[0] if limit is None else min(dims[0], limit)
            record_size = int(np.prod(dims[1:], dtype=np.int64))
            expected = count * record_size
            payload = _read_writable(stream, expected)
            if len(payload) != expected:
                raise AnnobootError(f"{broken}: {len(payload)} data bytes, header promises {expected}")
            if limit is None and stream.read(1):
                raise AnnobootError(f"{broken}: data continues past the {dims[0]} records the header declares")
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise AnnobootError(f"{broken}: {exc}") from None
    data = np.frombuffer(payload, dtype=np.uint8).reshape(count, *dims[1:])
    return dims, data


class FashionMNISTSource(InMemoryImageSource):
    """Fashion-MNIST, one split, as one in-memory uint8 tensor.

    images (via :meth:`in_memory`): (N, 1, 28, 28) uint8; ``source[i]``: (1, 28, 28) uint8.
    labels: (N,) int64 in [0, 10); class_names: the 10 Fashion-MNIST names.
    ``limit`` keeps the first N images of the split (the files are already shuffled).
    """

    def __init__(self, root: str | None = None, split: str = "train", limit: int | None = None):
        if split not in _SPLIT_PREFIX:
            raise AnnobootError(
                f"Fashion-MNIST split '{split}' does not exist; choose one of {', '.join(_SPLIT_PREFIX)}"
            )
        if limit is not None and limit <= 0:
            raise AnnobootError(f"Fashion-MNIST limit must be a positive number of images, got {limit}")
        folder = Path(root if root is not None else FASHION_MNIST_ROOT)
        if not folder.is_dir():
            raise AnnobootError(_install_hint(folder))
        prefix = _SPLIT_PREFIX[split]
        images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
        for path in (images_path, labels_path):
            if not path.is_file():
                raise AnnobootError(f"{_install_hint(folder)}; missing file: {path}")

        image_dims, images = _read_idx(images_path, _IMAGES_MAGIC, limit)
        label_dims, labels = _read_idx(labels_path, _LABELS_MAGIC, limit)
        if image_dims[1:] != (_SIDE, _SIDE):
            raise AnnobootError(f"{images_path} holds {image_dims[1:]} images; Fashion-MNIST images are 28x28")
        if image_dims[0] != label_dims[0]:
            raise AnnobootError(
                f"{images_path} holds {image_dims[0]} images but {labels_path} holds {label_dims[0]} labels; "
                "the two files come from different releases: re-install dataset-fashion-mnist"
            )
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise AnnobootError(f"{labels_path} holds label {labels.max()}; Fashion-MNIST has 10 classes (0-9)")

        self.root = str(folder)
        self.split = split
        self.name = f"fashion_mnist/{split}"
        self.class_names = list(FASHION_MNIST_CLASSES)
        # A view of the writable buffer _read_idx filled: no copy of the 47 MB.
        self._images = torch.from_numpy(images).unsqueeze(1)
        self.labels = torch.from_numpy(labels.astype(np.int64))


@register_source("fashion_mnist")
def build_fashion_mnist(cfg) -> FashionMNISTSource:
    return FashionMNISTSource(root=cfg.root, split=cfg.split, limit=cfg.limit)
