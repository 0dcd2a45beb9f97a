"""A folder of image files, flat or nested, decoded with PIL one file at a time.

Decode only (``annoboot.data.decode``): every file comes back as RGB uint8 with its short side
capped, and nothing else is done to it (crops and augmentations are rendered later, on the
device). A file that cannot be decoded comes back as None, so one bad file in a scraped folder
never stops a run; an image declaring more than ``decode.MAX_IMAGE_PIXELS`` pixels is such a
file, and so is never decoded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from annoboot.data.base import ImageSource
from annoboot.data.decode import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, load_image_file
from annoboot.data.registry import register_source
from annoboot.errors import AnnobootError

logger = logging.getLogger(__name__)


@dataclass
class ImageFiles:
    """What a folder scan found: ``paths`` to decode, sorted by relative path, and ``special``:
    entries with an image name that are not regular files (FIFOs, sockets, devices), left
    unopened because opening a FIFO blocks until something writes to it."""

    paths: List[str]
    special: List[str] = field(default_factory=list)

    def describe_skipped(self) -> str:
        return f"skipped {len(self.special)} non-regular file(s) with image names, e.g. {self.special[0]}"


def scan_image_files(root: "str | os.PathLike") -> ImageFiles:
    """Image files under ``root`` (any depth), sorted by their path relative to ``root``.

    Symlinked files are skipped (in scraped sets they duplicate real files), symlinked folders
    are not followed, hidden names (``.*``, e.g. macOS ``._x.jpg`` forks) are ignored, and only
    regular files are listed: the others are counted in ``special``.
    """
    found: List[str] = []
    special: List[str] = []
    pending = [str(root)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:  # an unreadable sub-folder holds nothing we can use (as os.walk treats it)
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                # DirEntry knows the type from the directory listing: no extra stat per file
                (found if entry.is_file(follow_symlinks=False) else special).append(entry.path)
    prefix = os.path.join(str(root), "")
    found.sort(key=lambda path: path[len(prefix):].split(os.sep))  # relative path parts, without pathlib's cost
    return ImageFiles(found, sorted(special))


def find_image_files(root: Path) -> List[str]:
    """The paths of :func:`scan_image_files`; skipped non-regular files are logged as a warning."""
    files = scan_image_files(root)
    if files.special:
        logger.warning("%s: %s", root, files.describe_skipped())
    return files.paths


class ImageFolderSource(ImageSource):
    """Image files under ``root``, decoded on access.

    ``source[i]``: (3, H, W) uint8 RGB with min(H, W) <= ``max_short_side``, or None when the
    file cannot be decoded (logged at DEBUG with its path). ``paths``: the files, sorted by
    relative path; ``limit`` keeps the first N of them.

    With ``labels_from_subfolders`` the class of a file is its first-level sub-folder under
    ``root`` (deeper folders belong to that class): ``class_names`` are those folder names,
    sorted, and ``labels`` is (N,) int64 indexing them. Classes are named from all files found
    before ``limit`` is applied, so label ids do not depend on the limit.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        labels_from_subfolders: bool = False,
        limit: int | None = None,
        max_short_side: int = 256,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ):
        folder = Path(root)
        if not folder.is_dir():
            raise AnnobootError(
                f"image folder not found: {folder} does not exist or is not a directory; "
                "pass data.annotation.root=<dir> holding image files"
            )
        if limit is not None and limit <= 0:
            raise AnnobootError(f"image folder limit must be a positive number of images, got {limit}")
        if max_short_side <= 0:
            raise AnnobootError(f"max_short_side must be a positive number of pixels, got {max_short_side}")
        paths = find_image_files(folder)
        if not paths:
            raise AnnobootError(
                f"no images found under {folder} (searched recursively for {', '.join(IMAGE_EXTENSIONS)}, "
                "any case; symlinked, hidden and non-regular files are skipped)"
            )

        self.root = str(folder)
        self.name = f"image_folder/{folder.name or folder}"
        self.max_short_side = max_short_side
        self.max_pixels = max_pixels
        if labels_from_subfolders:
            classes_of_files = self._first_level_folders(folder, paths)
            self.class_names = sorted(set(classes_of_files))
            index_of_class = {name: i for i, name in enumerate(self.class_names)}
            labels = [index_of_class[name] for name in classes_of_files]
            self.labels = torch.tensor(labels[:limit], dtype=torch.int64)
        self.paths: List[str] = paths[:limit]

    @staticmethod
    def _first_level_folders(root: Path, paths: List[str]) -> List[str]:
        parts = [Path(path).relative_to(root).parts for path in paths]
        loose = [path for path, rel in zip(paths, parts) if len(rel) == 1]
        if loose:
            raise AnnobootError(
                f"labels_from_subfolders is on but {len(loose)} image(s) lie directly in {root} "
                f"(e.g. {loose[0]}): put each image in a sub-folder named after its class "
                "(root/<class>/image.jpg), or turn labels_from_subfolders off"
            )
        return [rel[0] for rel in parts]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Optional[torch.Tensor]:
        """(3, H, W) uint8 RGB, or None when the file cannot be decoded."""
        return self.load(index)[0]

    def load(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        """(image, None), or (None, :func:`failure_reason`) when the file cannot be decoded."""
        return load_image_file(self.paths[index], self.max_short_side, self.max_pixels, self.read_timeout)


@dataclass
class ImageFolderOptions:
    """The options of kind image_folder."""

    labels_from_subfolders: bool = False  # class = first sub-folder (evaluation)


@register_source("image_folder", options=ImageFolderOptions)
def build_image_folder(cfg) -> ImageFolderSource:
    if not cfg.root:
        raise AnnobootError(
            "data root is required for image_folder: set data.annotation.root=<dir> "
            "(likewise data.bootstrap.root, eval.train.root, eval.test.root for those sources)"
        )
    return ImageFolderSource(cfg.root, labels_from_subfolders=cfg.labels_from_subfolders, limit=cfg.limit,
                             max_short_side=cfg.max_short_side, max_pixels=cfg.max_pixels)
