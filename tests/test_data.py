"""Specification of annoboot.data: sources decode real files, streams are exact and resumable."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

from annoboot.config import FASHION_MNIST_ROOT, SourceConfig
from annoboot.data import (
    BatchStream,
    FashionMNISTSource,
    ImageBatch,
    ImageFolderSource,
    build_source,
    build_stream,
    iter_eval_batches,
    pad_collate,
)
from annoboot.data.base import InMemoryImageSource
from annoboot.data.stream import epoch_order
from annoboot.errors import AnnobootError

needs_fashion_mnist = pytest.mark.skipif(
    not Path(FASHION_MNIST_ROOT).is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)",
)


# ---------------------------------------------------------------------------------------------
# Helpers: real-looking photos, images that encode their own index, broken files.


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


def index_png_size(index: int) -> tuple:
    return 6 + index % 4, 5 + index % 3


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



def tensor_indices(batch: ImageBatch) -> List[int]:
    pixels = batch.images[:, 0, 0, :2].long().cpu()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


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


# ---------------------------------------------------------------------------------------------
# Image folder: discovery and labels


def test_image_folder_finds_images_flat_and_nested_sorted(tmp_path):
    photo = natural_photos(1)[0]
    for relative in ["b.png", "A.JPG", "sub/deep/c.jpeg", "sub/d.webp", "e.Tiff", "f.bmp", "g.gif"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(path)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    os.symlink(tmp_path / "b.png", tmp_path / "link.png")

    source = ImageFolderSource(tmp_path)
    names = [Path(p).relative_to(tmp_path).as_posix() for p in source.paths]
    assert names == ["A.JPG", "b.png", "e.Tiff", "f.bmp", "g.gif", "sub/d.webp", "sub/deep/c.jpeg"]
    assert source.labels is None and source.in_memory() is None
    for i in range(len(source)):
        image = source[i]
        assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.is_contiguous()
        assert min(image.shape[1:]) == min(photo.shape[:2])  # under the cap: not resized
    assert len(ImageFolderSource(tmp_path, limit=3)) == 3


def test_image_folder_labels_come_from_first_level_subfolders(tmp_path):
    photos = natural_photos(2)
    for relative in ["dog/1.jpg", "cat/2.jpg", "cat/indoor/3.jpg", "bird/4.png"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photos[0]).save(path)
    source = ImageFolderSource(tmp_path, labels_from_subfolders=True)
    assert source.class_names == ["bird", "cat", "dog"]
    assert [Path(p).relative_to(tmp_path).as_posix() for p in source.paths] == [
        "bird/4.png",
        "cat/2.jpg",
        "cat/indoor/3.jpg",
        "dog/1.jpg",
    ]
    assert source.labels.dtype == torch.int64 and source.labels.tolist() == [0, 1, 1, 2]
    limited = ImageFolderSource(tmp_path, labels_from_subfolders=True, limit=2)
    assert limited.class_names == ["bird", "cat", "dog"] and limited.labels.tolist() == [0, 1]


def test_labels_from_subfolders_rejects_images_directly_in_root(tmp_path):
    write_index_png(tmp_path / "cat" / "1.png", 1)
    write_index_png(tmp_path / "loose.png", 2)
    with pytest.raises(AnnobootError, match="loose.png.*sub-folder"):
        ImageFolderSource(tmp_path, labels_from_subfolders=True)


def test_image_folder_missing_root_names_the_path(tmp_path):
    with pytest.raises(AnnobootError, match=str(tmp_path / "absent")):
        ImageFolderSource(tmp_path / "absent")


def test_image_folder_without_images_names_path_and_extensions(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(AnnobootError) as error:
        ImageFolderSource(tmp_path)
    assert str(tmp_path) in str(error.value) and ".jpg" in str(error.value) and ".png" in str(error.value)


# ---------------------------------------------------------------------------------------------
# Image folder: decoding the awkward files real folders hold


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    """One file per awkward case; returns {case name: path}."""
    root = tmp_path_factory.mktemp("zoo")
    photo = natural_photos(1)[0]
    files = {}

    def path(name: str) -> Path:
        files[name.split(".")[0]] = root / name
        return root / name

    Image.fromarray(photo).save(path("good.jpg"), quality=90)
    good_jpeg = files["good"].read_bytes()
    path("truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    path("empty.jpg").write_bytes(b"")
    path("text.png").write_text("this is a text file, not a PNG\n")
    Image.new("RGB", (40, 30), (255, 0, 0)).convert("CMYK").save(path("cmyk.jpg"), quality=95)
    gradient16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    Image.fromarray(gradient16).save(path("gray16.png"))
    Image.fromarray(photo).quantize(16).save(path("palette.png"))
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., 2] = 255  # blue, opaque on the left half, fully transparent on the right
    rgba[:, :15, 3] = 255
    Image.fromarray(rgba).save(path("rgba.png"))
    Image.fromarray(photo).convert("L").save(path("gray.png"))
    Image.fromarray(photo).convert("1").save(path("bilevel.png"))
    return files


def decode(path: Path, max_short_side: int = 256):
    source = ImageFolderSource(path.parent, max_short_side=max_short_side)
    return source[source.paths.index(str(path))]


@pytest.mark.parametrize("case", ["truncated", "empty", "text"])
def test_undecodable_files_give_none_and_log_the_path(zoo, case, caplog):
    with caplog.at_level("DEBUG", logger="annoboot.data.decode"):
        assert decode(zoo[case]) is None
    assert str(zoo[case]) in caplog.text


def test_decompression_bomb_gives_none(zoo, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # good.jpg is far over 2x this
    assert decode(zoo["good"]) is None


@pytest.mark.parametrize("case", ["good", "cmyk", "gray16", "palette", "rgba", "gray", "bilevel"])
def test_decodable_files_come_back_as_rgb_uint8(zoo, case):
    image = decode(zoo[case])
    assert image is not None and image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
    assert image.is_contiguous()
    if case != "cmyk":  # the CMYK file is one flat colour; the others hold a photo or gradient
        assert image.float().std() > 10


def test_cmyk_jpeg_keeps_its_colour(zoo):
    red = decode(zoo["cmyk"]).float().mean(dim=(1, 2))
    assert red[0] > 230 and red[1] < 30 and red[2] < 30


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(zoo):
    gray = decode(zoo["gray16"])
    assert gray.shape == (3, 48, 64)
    row = gray[0, 0].tolist()
    assert row[0] == 0 and row[-1] == 255
    assert row == sorted(row) and len(set(row)) > 50  # a full smooth ramp
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_rgba_is_composited_onto_white(zoo):
    image = decode(zoo["rgba"])
    assert image[:, :, :15].float().mean(dim=(1, 2)).tolist() == [0, 0, 255]
    assert image[:, :, 15:].float().mean(dim=(1, 2)).tolist() == [255, 255, 255]


def test_grayscale_and_palette_match_their_source_pixels(zoo):
    gray = decode(zoo["gray"])
    expected = torch.from_numpy(np.array(Image.open(zoo["gray"])))
    assert all(torch.equal(gray[c], expected) for c in range(3))
    palette = decode(zoo["palette"])
    expected_rgb = torch.from_numpy(np.array(Image.open(zoo["palette"]).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(palette, expected_rgb)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_short_side_is_capped_keeping_aspect(tmp_path, suffix):
    photo = np.asarray(Image.fromarray(natural_photos(1)[0]).resize((640, 480)))
    Image.fromarray(photo).save(tmp_path / f"big{suffix}")
    image = ImageFolderSource(tmp_path, max_short_side=100)[0]
    assert image.shape == (3, 100, 133)
    small = ImageFolderSource(tmp_path, max_short_side=1000)[0]
    assert small.shape == (3, 480, 640)  # never upscaled
    # Downscaled, not cropped: the mean colour survives.
    assert torch.allclose(image.float().mean(dim=(1, 2)), small.float().mean(dim=(1, 2)), atol=4)


def test_exif_orientation_is_applied(tmp_path):
    photo = Image.fromarray(natural_photos(1)[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    image = ImageFolderSource(tmp_path)[0]
    assert tuple(image.shape[1:]) == (photo.width, photo.height)


# ---------------------------------------------------------------------------------------------
# Batching


def test_pad_collate_stacks_one_size_and_drops_none():
    a = torch.full((1, 3, 2), 9, dtype=torch.uint8)
    b = torch.full((3, 3, 2), 4, dtype=torch.uint8)
    batch, skipped = pad_collate([(a, 3), (None, 1), (b, 7)])
    assert skipped == 1 and batch.origins is None
    assert batch.images.shape == (2, 3, 3, 2) and batch.images.dtype == torch.uint8
    assert batch.sizes.dtype == torch.int64 and batch.sizes.tolist() == [[3, 2], [3, 2]]
    assert batch.labels.tolist() == [3, 7]
    assert (batch.images[0] == 9).all() and (batch.images[1] == 4).all()  # gray repeated to RGB
    unlabeled, _ = pad_collate([(a, None)])
    assert unlabeled.labels is None
    empty, skipped = pad_collate([(None, None), (None, None)])
    assert len(empty) == 0 and skipped == 2


def test_pad_collate_packs_mixed_sizes_into_one_canvas_with_edge_borders():
    tall = torch.full((3, 5, 2), 9, dtype=torch.uint8)
    wide = torch.full((1, 2, 4), 4, dtype=torch.uint8)
    batch, skipped = pad_collate([(tall, 3), (None, 1), (wide, 7)])
    assert skipped == 1 and len(batch) == 2 and batch.labels.tolist() == [3, 7]
    assert batch.images.shape[:2] == (1, 3) and batch.sizes.tolist() == [[5, 2], [2, 4]]
    assert torch.equal(batch.image(0), tall) and (batch.image(1) == 4).all()
    for i, value in enumerate((9, 4)):  # each image's one-pixel border repeats its edge
        (y, x), (h, w) = batch.origins[i].tolist(), batch.sizes[i].tolist()
        assert (batch.images[0, :, y - 1 : y + h + 1, x - 1 : x + w + 1] == value).all()
    # Far less canvas than padding to the largest height and width would take.
    sizes = [(256, 256 + 37 * i % 300) if i % 2 else (256 + 53 * i % 700, 256) for i in range(64)]
    images = [(torch.zeros((3, h, w), dtype=torch.uint8), None) for h, w in sizes]
    packed, _ = pad_collate(images)
    area = sum(h * w for h, w in sizes)
    padded_area = len(sizes) * max(h for h, _ in sizes) * max(w for _, w in sizes)
    assert packed.images[0, 0].numel() < 1.3 * area and padded_area > 3.5 * area, (packed.images.shape, area, padded_area)
    for i, (h, w) in enumerate(sizes):  # no two images overlap
        (y, x) = packed.origins[i].tolist()
        assert packed.image(i).shape == (3, h, w)
        for j in range(i):
            (y2, x2), (h2, w2) = packed.origins[j].tolist(), sizes[j]
            assert y + h + 1 <= y2 - 1 or y2 + h2 + 1 <= y - 1 or x + w + 1 <= x2 - 1 or x2 + w2 + 1 <= x - 1


def test_packing_does_not_change_rendered_views():
    from annoboot.views import render_views

    g = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (9, 7), (3, 12), (6, 6), (11, 2)]
    images = [torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g) for h, w in shapes]
    packed, _ = pad_collate([(image, None) for image in images])
    assert packed.origins is not None
    corners = torch.rand((len(images), 6, 2, 2), generator=g).sort(dim=2).values  # x1 < x2, y1 < y2
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], dim=-1)
    boxes[:, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # whole images: borders on all four sides
    for out_size in (3, 7, 16):  # shrinking and enlarging
        together = render_views(packed, boxes, out_size).view(len(images), 6, 3, out_size, out_size)
        for i, image in enumerate(images):
            alone, _ = pad_collate([(image, None)])
            assert torch.allclose(render_views(alone, boxes[i : i + 1], out_size), together[i], atol=1e-5), (out_size, i)


def test_in_memory_stream_visits_every_index_once_per_epoch():
    source = IndexedTensorSource(50)
    stream = BatchStream(source, batch_size=8, seed=3)
    first_epoch = [next(stream) for _ in range(6)]  # 48 of 50: the 2-image tail is dropped
    assert all(b.images.shape == (8, 1, 4, 4) and b.images.dtype == torch.uint8 for b in first_epoch)
    assert all(b.labels is None and b.sizes.tolist() == [[4, 4]] * 8 for b in first_epoch)
    seen = [i for batch in first_epoch for i in tensor_indices(batch)]
    assert seen == epoch_order(50, 3, 0)[:48].tolist() and len(set(seen)) == 48
    assert stream.state_dict() == {"epoch": 1, "position": 0, "skipped": 0, "bad_in_a_row": 0}
    assert tensor_indices(next(stream)) == epoch_order(50, 3, 1)[:8].tolist()


def test_streams_with_different_seeds_differ():
    source = IndexedTensorSource(64)
    a, b = BatchStream(source, 16, seed=0), BatchStream(source, 16, seed=1)
    assert tensor_indices(next(a)) != tensor_indices(next(b))


@pytest.mark.parametrize("taken", [0, 4, 6])
def test_in_memory_stream_resumes_exactly(taken):
    source = IndexedTensorSource(50)
    uninterrupted = BatchStream(source, batch_size=8, seed=1)
    for _ in range(taken):
        next(uninterrupted)
    state = uninterrupted.state_dict()
    resumed = BatchStream(source, batch_size=8, seed=1)
    resumed.load_state_dict(state)
    for _ in range(5):  # crosses an epoch boundary
        assert tensor_indices(next(resumed)) == tensor_indices(next(uninterrupted))


def test_file_stream_epoch_visits_each_index_once_with_true_sizes(tmp_path):
    source = ImageFolderSource(index_folder(tmp_path, 24))
    stream = BatchStream(source, batch_size=5, seed=0)
    seen = []
    for _ in range(4):  # 20 of 24
        batch = next(stream)
        assert len(batch) == 5 and batch.images.dtype == torch.uint8 and batch.labels is None
        indices = decoded_indices(batch)
        assert batch.sizes.tolist() == [list(index_png_size(i)) for i in indices]
        assert all(batch.image(k).shape == (3, *index_png_size(i)) for k, i in enumerate(indices))
        seen += indices
    assert seen == epoch_order(24, 0, 0)[:20].tolist()
    assert stream.state_dict() == {"epoch": 1, "position": 0, "skipped": 0, "bad_in_a_row": 0}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_file_stream_resumes_exactly_mid_epoch(tmp_path, num_workers):
    source = ImageFolderSource(index_folder(tmp_path, 23))
    uninterrupted = BatchStream(source, batch_size=4, seed=5, num_workers=num_workers)
    for _ in range(3):
        next(uninterrupted)
    state = uninterrupted.state_dict()
    assert state == {"epoch": 0, "position": 12, "skipped": 0, "bad_in_a_row": 0}
    expected = [decoded_indices(next(uninterrupted)) for _ in range(6)]  # crosses into epoch 1
    resumed = BatchStream(source, batch_size=4, seed=5, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert [decoded_indices(next(resumed)) for _ in range(6)] == expected
    # Restoring an earlier state on a running stream rewinds it, workers and all.
    uninterrupted.load_state_dict(state)
    assert decoded_indices(next(uninterrupted)) == expected[0]
    uninterrupted.close()
    resumed.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_file_stream_skips_and_counts_a_corrupt_file(tmp_path, num_workers):
    source = ImageFolderSource(index_folder(tmp_path, 20, corrupt=(7,)))
    stream = BatchStream(source, batch_size=5, seed=2, num_workers=num_workers)
    batches = [next(stream) for _ in range(4)]
    seen = [i for batch in batches for i in decoded_indices(batch)]
    assert sorted(set(seen)) == [i for i in range(20) if i != 7]
    assert all(len(batch) == 5 for batch in batches)  # the short batch is filled back to 5
    assert len(seen) == 20 and len(set(seen)) == 19  # with one repeat of an image of its own batch
    assert stream.skipped == 1 and stream.state_dict()["skipped"] == 1
    next(stream)
    resumed = BatchStream(source, batch_size=5, seed=2)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.skipped == stream.skipped
    stream.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_file_stream_of_unreadable_files_raises(tmp_path, num_workers):
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8 garbage")
    stream = BatchStream(ImageFolderSource(tmp_path), batch_size=2, seed=0, num_workers=num_workers)
    with pytest.raises(AnnobootError, match="most files are unreadable"):
        next(stream)
    stream.close()


def test_stream_needs_at_least_one_batch_of_images():
    with pytest.raises(AnnobootError, match="fewer than one batch"):
        BatchStream(IndexedTensorSource(3), batch_size=4, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streams_deliver_batches_on_cuda(tmp_path):
    memory_batch = next(BatchStream(IndexedTensorSource(16), 8, seed=0, device="cuda"))
    assert memory_batch.images.is_cuda and memory_batch.sizes.is_cuda
    stream = BatchStream(ImageFolderSource(index_folder(tmp_path, 8)), 4, seed=0, device="cuda", num_workers=2)
    file_batch = next(stream)
    assert file_batch.images.is_cuda and file_batch.sizes.is_cuda
    assert decoded_indices(file_batch) == epoch_order(8, 0, 0)[:4].tolist()
    stream.close()


# ---------------------------------------------------------------------------------------------
# Evaluation pass


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_batches_are_in_order_labelled_and_keep_the_tail(tmp_path, num_workers):
    for i in range(11):
        write_index_png(tmp_path / ("even" if i % 2 == 0 else "odd") / f"{i:02d}.png", i)
    (tmp_path / "odd" / "05.png").write_text("corrupt")  # one undecodable file
    source = ImageFolderSource(tmp_path, labels_from_subfolders=True)
    batches = list(iter_eval_batches(source, batch_size=4, num_workers=num_workers))
    kept_indices = [i for batch in batches for i in decoded_indices(batch)]
    kept_labels = [label for batch in batches for label in batch.labels.tolist()]
    assert kept_indices == [0, 2, 4, 6, 8, 10, 1, 3, 7, 9]  # source order: even/... then odd/...
    assert kept_labels == [i % 2 for i in kept_indices]  # labels stay with their images
    assert [len(batch) for batch in batches] == [4, 4, 2]  # 11 files in 4s; the bad one leaves 2 in the tail


def test_eval_batches_of_an_in_memory_source_are_slices():
    source = IndexedTensorSource(10)
    source.labels = torch.arange(10) % 3
    batches = list(iter_eval_batches(source, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [i for b in batches for i in tensor_indices(b)] == list(range(10))
    assert torch.equal(torch.cat([b.labels for b in batches]), source.labels)
    assert batches[-1].sizes.tolist() == [[4, 4], [4, 4]]


def test_eval_of_an_unreadable_folder_raises(tmp_path):
    (tmp_path / "a.png").write_text("x")
    with pytest.raises(AnnobootError, match="no image could be decoded"):
        list(iter_eval_batches(ImageFolderSource(tmp_path), batch_size=2))


# ---------------------------------------------------------------------------------------------
# build_source


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


# ---------------------------------------------------------------------------------------------
# Mostly bad sources


def test_a_mostly_bad_folder_stops_with_a_clear_message(tmp_path):
    source = ImageFolderSource(index_folder(tmp_path, 300, corrupt=tuple(i for i in range(300) if i % 5)))
    stream = BatchStream(source, batch_size=32, seed=0)
    with pytest.raises(AnnobootError) as error:
        for _ in range(9):
            next(stream)
    message = str(error.value)
    assert str(tmp_path) in message and "of 256 images tried" in message and "max_bad_fraction=0.5" in message
    assert f"annoboot data inspect {tmp_path}" in message and "not an image" in message
    bad = stream.skipped
    assert 0.7 < bad / 256 < 0.9 and f"{bad} of 256" in message and f"({bad / 256:.0%})" in message


def test_a_folder_with_a_few_bad_files_trains_on_and_counts_them(tmp_path, caplog):
    index_folder(tmp_path, 50, corrupt=(13,))
    (tmp_path / "0050.png").write_bytes(b"")  # and one empty file
    source = ImageFolderSource(tmp_path)
    stream = BatchStream(source, batch_size=17, seed=0)
    with caplog.at_level("WARNING", logger="annoboot.data.stream"):
        batches = [next(stream) for _ in range(3 * 18)]  # 18 epochs of 3 batches of 17 (all 51 files)
    assert all(len(b) == 17 for b in batches)  # batches that lost a file are filled back to 17
    assert stream.skipped == 36 and stream.skipped_by_reason == {"not an image": 18, "empty file": 18}
    assert stream.state_dict()["skipped"] == 36
    assert "skipped" in caplog.text and "empty file" in caplog.text  # per-reason counts in the log


def test_a_batch_that_lost_images_is_filled_back_to_its_size():
    from annoboot.batch import ImageBatch

    images = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    batch = ImageBatch(images, torch.tensor([[2, 2], [1, 2], [2, 1]]), torch.tensor([5, 6, 7]), ["a", "b", "c"])
    full = batch.filled_to(5)
    assert len(full) == 5 and full.images[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1]
    assert full.sizes.tolist() == [[2, 2], [1, 2], [2, 1], [2, 2], [1, 2]]
    assert full.labels.tolist() == [5, 6, 7, 5, 6] and full.captions == ["a", "b", "c", "a", "b"]
    assert batch.filled_to(3) is batch
    # A packed batch shares its canvas: the fill repeats sizes and origins, not pixels.
    packed, _ = pad_collate([(torch.full((1, 2, 3), v, dtype=torch.uint8), None) for v in (1, 2)] + [(torch.full((1, 4, 1), 3, dtype=torch.uint8), None)])
    full = packed.filled_to(5)
    assert full.images is packed.images and [int(full.image(i)[0, 0, 0]) for i in range(5)] == [1, 2, 3, 1, 2]


def test_a_small_folder_is_decoded_once_and_streamed_from_memory(tmp_path):
    from annoboot.data.cache import DecodedImages, cache_decoded

    for index in range(12):
        write_index_png(tmp_path / f"{index:02d}.png", index)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    source = ImageFolderSource(str(tmp_path))
    cached = cache_decoded(source, budget_mb=1, num_workers=2, progress=False)
    assert isinstance(cached, DecodedImages) and len(cached) == len(source)
    for index in range(len(source)):
        (image, reason), (again, why) = source.load(index), cached.load(index)
        assert (image is None and again is None and reason == why) or torch.equal(image, again)
    # The stream reads it in this process, with the same order, skips and counts as from files.
    config = SourceConfig(kind="image_folder", root=str(tmp_path), num_workers=2)
    from_files = build_stream(config, 4, seed=3, device="cpu", source=source)
    from_memory = build_stream(config, 4, seed=3, device="cpu", source=cached)
    assert from_memory.num_workers == 0
    for _ in range(6):
        a, b = next(from_files), next(from_memory)
        assert decoded_indices(a) == decoded_indices(b)
    assert from_files.skipped == from_memory.skipped >= 1
    from_files.close()
    # Over the budget: the source is left to decode from files.
    assert cache_decoded(source, budget_mb=0, progress=False) is source


def test_decode_workers_split_the_cores_of_each_local_rank_between_its_streams(tmp_path, monkeypatch):
    # A fixed 4 workers per stream put 8 ranks x 2 streams x 4 workers on a 16-core host.
    from annoboot.data import decode_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert decode_workers(None, streams=2) == 7  # one core left to the training loop
    assert decode_workers(None, streams=1) == 8  # 15, capped: each worker holds its own buffers
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun, 2 ranks: 8 cores each
    assert decode_workers(None, streams=2) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 2 cores each
    assert decode_workers(None, streams=2) == 1  # never 0: decoding still overlaps the step
    assert decode_workers(6, streams=2) == 6 and decode_workers(0) == 0  # the config's count wins
    with pytest.raises(AnnobootError, match="num_workers"):
        decode_workers(-1)
    # build_stream applies it to a file-backed source; an in-memory one needs no workers.
    folder = SourceConfig(kind="image_folder", root=str(index_folder(tmp_path, 8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert build_stream(folder, 4, seed=0, device="cpu", decoding_streams=2).num_workers == 3
    assert build_stream(folder, 4, seed=0, device="cpu", source=IndexedTensorSource(8)).num_workers == 0


# ---------------------------------------------------------------------------------------------
# Bad images within the budget: replaced, counted, resumed exactly


def test_a_batch_of_only_bad_images_is_replaced_when_the_budget_allows(tmp_path):
    order = epoch_order(10, 0, 0).tolist()
    index_folder(tmp_path, 10, corrupt=(order[0],))  # the first batch of one is a bad file
    for budget in (1.0, 0.5):
        stream = BatchStream(ImageFolderSource(tmp_path), batch_size=1, seed=0, max_bad_fraction=budget)
        assert decoded_indices(next(stream)) == [order[1]]  # the next image takes its place
        assert stream.skipped_by_reason == {"not an image": 1} and stream.state_dict()["position"] == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resume_landing_on_bad_batches_continues_like_the_uninterrupted_run(tmp_path, num_workers):
    order = epoch_order(12, 4, 0).tolist()
    index_folder(tmp_path, 12, corrupt=tuple(order[4:8]))  # batches 2 and 3 of the epoch hold only bad files
    source = ImageFolderSource(tmp_path)
    uninterrupted = BatchStream(source, batch_size=2, seed=4, num_workers=num_workers)
    for _ in range(2):
        next(uninterrupted)
    state = uninterrupted.state_dict()
    expected = [decoded_indices(next(uninterrupted)) for _ in range(4)]
    assert expected[0] == order[8:10]
    resumed = BatchStream(source, batch_size=2, seed=4, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert [decoded_indices(next(resumed)) for _ in range(4)] == expected
    assert resumed.state_dict() == uninterrupted.state_dict()
    uninterrupted.close()
    resumed.close()


def test_a_folder_where_nothing_decodes_stops_even_with_the_widest_budget(tmp_path):
    index_folder(tmp_path, 9, corrupt=tuple(range(9)))
    stream = BatchStream(ImageFolderSource(tmp_path), batch_size=2, seed=0, max_bad_fraction=1.0)
    with pytest.raises(AnnobootError, match=r"none of the last 8 images tried could be used \(not an image: 8\)"):
        next(stream)


def test_a_stream_state_written_before_bad_in_a_row_was_kept_still_loads(tmp_path):
    source = ImageFolderSource(index_folder(tmp_path, 8))
    stream = BatchStream(source, batch_size=2, seed=0)
    stream.load_state_dict({"epoch": 1, "position": 2, "skipped": 3})
    assert stream.state_dict() == {"epoch": 1, "position": 2, "skipped": 3, "bad_in_a_row": 0}


# ---------------------------------------------------------------------------------------------
# Failure reasons, pixel caps, warnings


def test_inspect_and_training_name_a_failure_alike(tmp_path):
    from annoboot.data.decode import failure_reason
    from annoboot.data.tools import inspect_folder

    for name in ("a.png", "b/c.png", "d/e/f.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("not an image")
    write_index_png(tmp_path / "good.png", 0)
    report = inspect_folder(str(tmp_path))
    assert list(report["bad_by_reason"]) == ["not an image"] and report["bad_by_reason"]["not an image"]["count"] == 3
    source = ImageFolderSource(tmp_path)
    assert {source.load(i)[1] for i in range(len(source))} == {None, "not an image"}
    # Paths and object addresses never split a reason's count.
    first = failure_reason(OSError("cannot read '/data/a/x.png' from <_io.BytesIO object at 0x7f3a2c1d90>"), 10)
    second = failure_reason(OSError("cannot read '/other/y.png' from <_io.BytesIO object at 0x7f99abcdef12>"), 10)
    assert first == second and "/" not in first and "0x" not in first


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` grey pixels (its data is a stub)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    stub = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stub) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9_000, 10_000])  # under and over PIL's own warning at 89M pixels
def test_an_image_over_the_pixel_cap_is_a_bad_file_and_is_not_decoded(tmp_path, side):
    import warnings

    from annoboot.data.decode import MAX_IMAGE_PIXELS

    (tmp_path / "huge.png").write_bytes(png_claiming(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would say it was decoded
        image, reason = ImageFolderSource(tmp_path).load(0)
    assert image is None and reason == f"over the {MAX_IMAGE_PIXELS:,}-pixel cap"
    assert 50_000_000 < MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS


def test_a_one_pixel_image_decodes_without_a_non_writable_array_warning(tmp_path):
    import warnings

    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns (once per process) on a read-only NumPy array
        image, reason = ImageFolderSource(tmp_path).load(0)
    assert reason is None and image.flatten().tolist() == [1, 2, 3]
