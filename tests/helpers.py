"""Shared test helpers: tiny configs, skip markers for optional datasets, and the small
factories (images, shards, sources) that tests in several files use. Plain functions and
constants, imported as ``from helpers import ...`` (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from annoboot.batch import ImageBatch
from annoboot.data import build_source
from annoboot.data.base import ImageSource, InMemoryImageSource
from annoboot.data.fashion_mnist import FASHION_MNIST_ROOT, FashionMNISTSource
from annoboot.data.scene_generator import SceneGeneratorOptions
from annoboot.data.scenes import SceneSource
from annoboot.eval.features import extract_features
from annoboot.eval.knn import knn_accuracy
from annoboot.models import CaptionTokenizer
from annoboot.models.encoder import EncoderOutput, build_encoder
from annoboot.presets import DINO_TINY, TINY, TINY_TEXT  # noqa: F401 (the tests import them from here)
from annoboot.views import Normalize

# ---------------------------------------------------------------------------------------------
# Datasets this machine may lack: tests that need one skip without it, except in CI (CI=true),
# where scripts/setup.sh installs them all and a missing one is a broken set-up: those tests fail.

def in_ci(environ=os.environ) -> bool:
    return environ.get("CI", "").lower() in ("true", "1")


def needs_data(present: bool, reason: str, environ=os.environ):
    """Skip without the data; in CI run anyway, so the test fails on the missing files."""
    return pytest.mark.skipif(not present and not in_ci(environ), reason=reason)


HAVE_FMNIST = (Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz").is_file()

needs_fmnist = needs_data(HAVE_FMNIST, f"Fashion-MNIST not installed at {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)")

needs_fashion_mnist = needs_data(Path(FASHION_MNIST_ROOT).is_dir(),
                                 f"Fashion-MNIST not installed at {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)")

TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")

needs_tuxpaint = needs_data(TUXPAINT_ROOT.is_dir(),
                            "Tux Paint stamps not installed (apt-get install --no-install-recommends tuxpaint-stamps-default)")

needs_openclipart = needs_data(Path("/usr/share/openclipart/svg").is_dir(),
                               "Open Clip Art not installed (apt-get install --no-install-recommends openclipart-png openclipart-svg)")


# ---------------------------------------------------------------------------------------------
# Configs small enough for CPU tests.

# The tiny model of the tests and the quick benchmarks' settings share src/annoboot/presets.py.

TINY_VIT = ("vit_tiny_patch16_224", {"patch_size": 4, "depth": 2})

SCENES = SceneGeneratorOptions(num_scenes=24, canvas=64, items=[2, 4], item_size=[16, 36], pool_limit=2000)


# ---------------------------------------------------------------------------------------------
# Fixtures a test module opts into by importing them.

@pytest.fixture(autouse=True)
def one_thread():
    # Tiny workloads: a second OpenMP thread only adds overhead, and on a busy 2-core machine
    # spinning threads slow small ops down a hundredfold. A test module that wants this imports
    # it (``from helpers import one_thread``): an imported autouse fixture applies to that module only.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Runs: the command line, logged metrics, features.

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "annoboot.cli", *args], capture_output=True, text=True, timeout=120)


def logged_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def knn_of(encoder, cfg) -> float:
    normalize = Normalize(cfg.views.mean, cfg.views.std)
    train = extract_features(encoder, build_source(cfg.eval.train), cfg.views.img_size, normalize)
    test = extract_features(encoder, build_source(cfg.eval.test), cfg.views.img_size, normalize)
    return knn_accuracy(train.pooled, train.labels, test.pooled, test.labels, num_classes=10, k=20, temperature=0.07)


# ---------------------------------------------------------------------------------------------
# Images and sources: real-looking photos, images that encode their own index, broken files.

def natural_photos(count: int, seed: int = 0) -> List[np.ndarray]:
    """(H, W, 3) uint8 photos: scikit-image's bundled ones when installed, else smooth colour
    gradients with noise (JPEG-compressible like a photo, unlike white noise)."""
    try:
        from skimage import data as skdata

        bundled = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
        return [np.ascontiguousarray(bundled[i % len(bundled)][: 180 + 7 * i, : 200 + 5 * i]) for i in range(count)]
    except ImportError:
        rng = np.random.default_rng(seed)
        photos = []
        for i in range(count):
            height, width = 120 + 9 * i, 160 + 5 * i
            y, x = np.mgrid[0:height, 0:width].astype(np.float32)
            phase = rng.uniform(0, 2 * np.pi, size=3)
            channels = [127 + 100 * np.sin(x / (17 + 5 * c) + y / (29 + 3 * c) + phase[c]) for c in range(3)]
            pixels = np.stack(channels, axis=-1) + rng.normal(0, 8, size=(height, width, 3))
            photos.append(np.clip(pixels, 0, 255).astype(np.uint8))
        return photos


def write_index_png(path: Path, index: int) -> None:
    """A small PNG whose pixel (0, 0) holds its index (R = index % 256, G = index // 256) and whose
    size, (6 + index % 4) x (5 + index % 3), varies so batches need padding."""
    height, width = 6 + index % 4, 5 + index % 3
    pixels = np.full((height, width, 3), 200, dtype=np.uint8)
    pixels[0, 0] = (index % 256, index // 256, 7)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def decoded_indices(batch: ImageBatch) -> List[int]:
    pixel = torch.stack([batch.image(i)[:, 0, 0] for i in range(len(batch))]).long().cpu()
    return (pixel[:, 0] + 256 * pixel[:, 1]).tolist()


def index_folder(root: Path, count: int, corrupt: tuple = ()) -> Path:
    """``count`` files 0000.png ...; those in ``corrupt`` hold text instead of an image."""
    for i in range(count):
        path = root / f"{i:04d}.png"
        if i in corrupt:
            path.write_text("not an image")
        else:
            write_index_png(path, i)
    return root


class IndexedTensorSource(InMemoryImageSource):
    """In-memory source of (N, 1, 4, 4) uint8 images, image i holding i in pixels (0,0), (0,1)."""

    def __init__(self, count: int):
        self.name = "indexed_tensor"
        self._images = torch.zeros((count, 1, 4, 4), dtype=torch.uint8)
        index = torch.arange(count)
        self._images[:, 0, 0, 0] = (index % 256).to(torch.uint8)
        self._images[:, 0, 0, 1] = (index // 256).to(torch.uint8)


def random_images(count: int, side: int = 28) -> ImageBatch:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, side, side), dtype=torch.uint8, generator=g)
    return ImageBatch(images, torch.full((count, 2), side))


class TensorSource(ImageSource):
    """Synthetic labelled images: class c is a flat image of grey level 40 + 50 c, plus noise."""

    def __init__(self, num_images: int, num_classes: int = 3, side: int = 12, labelled: bool = True, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(num_images) % num_classes
        noise = torch.randint(-10, 11, (num_images, 3, side, side), generator=generator)
        self._images = (40 + 50 * labels.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
        self.labels = labels if labelled else None
        self.name = f"tensors/{seed}"

    def __len__(self) -> int:
        return self._images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._images[index]

    def in_memory(self) -> torch.Tensor:
        return self._images


def tiny_vit(img_size: int = 16):
    torch.manual_seed(0)
    return build_encoder(TINY_VIT[0], img_size, TINY_VIT[1])


def photo(seed: int, size=(48, 40)) -> Image.Image:
    """A smooth colour image (gradients plus noise), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * rng.uniform(1, 5), y * rng.uniform(1, 5), (x + y) * rng.uniform(1, 3)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))


def jpeg_bytes(seed: int, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    photo(seed, size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(rgb, size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_bytes(color, size=(12, 10)):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims ``width`` x ``height`` 8-bit grey pixels
    (its pixel data is a stub): what a size cap must reject before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    stub = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stub) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# Shards and captions.

def write_tar(path, samples):
    """Write (key, {ext: bytes}) samples into one webdataset tar at ``path``."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for key, members in samples:
            sink.write({"__key__": key, **members})


class _TokenizerCountingMainProcessCalls:
    """The CLIP tokenizer, counting the calls made in the process that built it (the training
    process); each loader worker runs its own copy, whose count stays in the worker."""

    def __init__(self, context_length: int = 16):
        self.tokenizer = CaptionTokenizer(context_length)
        self.main_pid = os.getpid()
        self.main_process_calls = 0

    def __call__(self, captions):
        self.main_process_calls += os.getpid() == self.main_pid
        return self.tokenizer(captions)


def capture_bootstrap_objective(monkeypatch, method_module) -> List[dict]:
    """Record the (detached) logits and the targets each AB training step of ``method_module``
    (e.g. annoboot.methods.ab_simclr) hands to ``bootstrap_objective``, one dict per call."""
    calls: List[dict] = []
    real = method_module.bootstrap_objective

    def spy(logits, targets, boxes, drop_self_pairs, target_boxes=None):
        calls.append({"logits": logits.detach(), "targets": targets, "boxes": boxes, "target_boxes": target_boxes,
                      "drop_self_pairs": drop_self_pairs})
        return real(logits, targets, boxes, drop_self_pairs, target_boxes)

    monkeypatch.setattr(method_module, "bootstrap_objective", spy)
    return calls


# --- Hand-made scenes and encoder for the probes in context ------------------------------------
# Flat squares of one grey per class, pasted without overlap; an "encoder" whose tokens are the
# class under each patch's centre. A probe that reads exactly a box's tokens scores 100% on them.

NORMALIZE = Normalize([0.5] * 3, [0.5] * 3)
PATCH = 8


def grey_level(label: int) -> int:
    return 60 + 18 * label  # every class its own grey, all opaque when pasted (>= 48)


def flat_pool(size: int = 40):
    """Items that are flat squares of their class's grey: class c = grey_level(c)."""
    labels = torch.arange(size) % 10
    images = torch.stack([torch.full((28, 28), grey_level(int(c)), dtype=torch.uint8) for c in labels])
    return images, labels


class FlatPool(FashionMNISTSource):
    """A Fashion-MNIST split of 40 flat items, 4 of each class (``flat_pool``)."""

    def __init__(self, split: str):
        images, self.labels = flat_pool()
        self.split, self._images, self.class_names = split, images[:, None], [str(c) for c in range(10)]


class PatchCentreClass(nn.Module):
    """A hand-made encoder: token (i, j) is the one-hot class of the pixel at its patch's centre
    (11 outputs: 10 classes and the background), so a token carries the label of the item whose
    box holds its centre and nothing else."""

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        pixels = (images[:, 0] * 0.5 + 0.5) * 255  # normalisation undone
        centres = pixels[:, PATCH // 2 :: PATCH, PATCH // 2 :: PATCH]  # (B, h, w)
        label = ((centres - 60) / 18).round().long().clamp(0, 9)
        label[centres < 50] = 10  # background
        tokens = nn.functional.one_hot(label.flatten(1), 11).float()
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(1))


def flat_scenes(split: str, count: int, **options) -> SceneSource:
    """64-px scenes of 2-4 flat items (12-20 px, no overlap, no clutter) of split ``split``."""
    cfg = SceneGeneratorOptions(num_scenes=count, canvas=64, items=[2, 4], item_size=[12, 20], max_overlap=0.0, clutter=0,
                                **options)
    return SceneSource(cfg, split, pool=FlatPool(split))
