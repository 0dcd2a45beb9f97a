"""annoboot.data.image_folder: finding images, flat and nested, and labels from sub-folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import natural_photos, write_index_png
from PIL import Image

from annoboot.data import ImageFolderSource
from annoboot.errors import AnnobootError


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
