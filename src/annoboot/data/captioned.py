"""Image-caption pairs from folders: a folder of ``<image>`` + ``<image>.txt`` twins, and the two
captioned sets that install offline as Debian packages (Open Clip Art, Tux Paint stamps).

Each is a :class:`CaptionedImagesSource`: decoded on access like an image folder, with
``captions`` (one string per image), and for evaluation ``labels``/``class_names`` taken from the
first-level sub-folder (the packages' categories). Images without a usable caption are left out
when the source is built, so a CLIP batch never holds an image without text.

Splits: ``train`` / ``test`` / ``all``; a file's split is fixed by a hash of its path relative
to the root (10% test), so it does not change when files are added or a limit is applied.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from annoboot.data.base import ImageSource
from annoboot.data.captions import caption_from_txt_twin, clean_caption
from annoboot.data.decode import MAX_IMAGE_PIXELS, load_image_file
from annoboot.data.image_folder import find_image_files
from annoboot.data.registry import register_source
from annoboot.errors import AnnobootError

logger = logging.getLogger(__name__)

OPENCLIPART_ROOT = "/usr/share/openclipart"
TUXPAINT_ROOT = "/usr/share/tuxpaint/stamps"
SPLITS = ("train", "test", "all")
TEST_PERCENT = 10

# Open Clip Art metadata: the work's <dc:title> is the one outside any <cc:Agent> (agents name
# the library, author and rights holder); <rdf:li> items are keywords. Titles are short and
# sometimes junk ("untitled", a collection or theme name shared by hundreds of files).
_TITLE = re.compile(rb"(<cc:Agent[^>]*>\s*)?<dc:title>\s*([^<]*?)\s*</dc:title>")
_KEYWORD = re.compile(rb"<rdf:li>\s*([^<]{1,40}?)\s*</rdf:li>")
COLLECTION_TITLE_COUNT = 20  # a title shared by this many files names a collection, not the image
MAX_KEYWORDS = 3
_MAX_SVG_BYTES_READ = 1 << 16  # the metadata block sits near the top of the file
_MAX_PNG_BYTES = 4 << 20  # a few Open Clip Art PNGs are huge renders; skip them


def _relative(root: Path, path: str) -> str:
    """``path`` relative to ``root`` with '/' separators (string slicing: pathlib is slow for 10k files)."""
    prefix = os.path.join(str(root), "")
    relative = path[len(prefix):] if path.startswith(prefix) else Path(path).relative_to(root).as_posix()
    return relative.replace(os.sep, "/")


def category_of(root: Path, path: str) -> str:
    """The first-level sub-folder of ``path`` under ``root``; '.' for a file in the root itself."""
    parts = _relative(root, path).split("/")
    return parts[0] if len(parts) > 1 else "."


def split_of(relative_path: str) -> str:
    """'test' for a stable ~10% of relative paths, else 'train'."""
    digest = hashlib.blake2b(relative_path.encode("utf-8"), digest_size=4).digest()
    return "test" if int.from_bytes(digest, "little") % 100 < TEST_PERCENT else "train"


def openclipart_metadata(image_path: str, png_root: Path, svg_root: Path) -> Tuple[Optional[str], List[str]]:
    """(title, keywords) from the SVG twin (same relative path under ``svg_root``)."""
    relative = Path(image_path).relative_to(png_root).with_suffix(".svg")
    if not (svg_root / relative).is_file():  # missing, or a FIFO, whose open would block
        return None, []
    try:
        with open(svg_root / relative, "rb") as handle:
            head = handle.read(_MAX_SVG_BYTES_READ)
    except OSError:
        return None, []
    title = next((m.group(2) for m in _TITLE.finditer(head) if m.group(1) is None), None)
    keywords = [m.group(1).decode("utf-8", errors="replace").strip() for m in _KEYWORD.finditer(head)]
    return (None if title is None else clean_caption(title.decode("utf-8", errors="replace"))), keywords


def _stem_words(path: str) -> Optional[str]:
    """'star_49pt05step.png' -> 'star': the file name's words without numbers."""
    words = [w for w in re.split(r"[\W_]+", Path(path).stem) if w and not any(ch.isdigit() for ch in w)]
    return clean_caption(" ".join(words))


def openclipart_captions(paths: List[str], png_root: Path, svg_root: Path) -> List[Optional[str]]:
    """One caption per PNG: its title (or, for collection titles, its file name's words),
    followed by up to :data:`MAX_KEYWORDS` keywords not already in it; None without either.
    Cached per process: a run builds the set up to four times (train, probes, retrieval)."""
    return list(_openclipart_captions(tuple(paths), png_root, svg_root))


@functools.lru_cache(maxsize=4)
def _openclipart_captions(paths: Tuple[str, ...], png_root: Path, svg_root: Path) -> Tuple[Optional[str], ...]:
    metadata = [openclipart_metadata(path, png_root, svg_root) for path in paths]
    title_counts = Counter(title for title, _ in metadata if title)
    captions: List[Optional[str]] = []
    for path, (title, keywords) in zip(paths, metadata):
        if title is None or title_counts[title] >= COLLECTION_TITLE_COUNT:
            title = _stem_words(path)
        extra = [k for k in dict.fromkeys(keywords) if title is None or k.lower() not in title.lower()][:MAX_KEYWORDS]
        if title is None and not extra:
            captions.append(None)
        else:
            captions.append(", ".join(([title] if title else []) + extra))
    return tuple(captions)


class CaptionedImagesSource(ImageSource):
    """Image files with one caption each, decoded on access (RGB uint8, short side capped).

    ``source[i]`` is (3, H, W) uint8 or None for an undecodable file; ``captions[i]`` its text;
    ``labels[i]`` the index of its first-level sub-folder in ``class_names`` (files directly in
    the root get the class '.').
    """

    def __init__(
        self,
        name: str,
        root: Path,
        items: List[Tuple[str, str]],
        class_names: Optional[List[str]] = None,
        max_short_side: int = 256,
        limit: Optional[int] = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ):
        self.name = name
        self.root = str(root)
        self.max_short_side = max_short_side
        self.max_pixels = max_pixels
        classes = [category_of(root, path) for path, _ in items]
        # Named from every file under the root (all splits), so ids agree between splits.
        self.class_names = sorted(set(class_names or classes))
        index_of = {c: i for i, c in enumerate(self.class_names)}
        items = items[:limit]
        self.paths = [path for path, _ in items]
        self.captions = [caption for _, caption in items]
        self.labels = torch.tensor([index_of[c] for c in classes[: len(items)]], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Optional[torch.Tensor]:
        return self.load(index)[0]

    def load(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        """(image, None), or (None, why) for an undecodable file: skipped and counted by the stream."""
        return load_image_file(self.paths[index], self.max_short_side, self.max_pixels, self.read_timeout)

    def describe(self) -> str:
        return f"{self.name}: {len(self)} captioned images in {len(self.class_names)} categories"


def _collect(
    root: Path,
    split: str,
    captions_of: Callable[[List[str]], List[Optional[str]]],
    keep: Callable[[str], bool] = lambda path: True,
) -> Tuple[List[Tuple[str, str]], int, List[str]]:
    """(path, caption) of the split's files that have a caption; how many had none; the
    categories of all files (every split)."""
    if split not in SPLITS:
        raise AnnobootError(f"split '{split}' of captioned images under {root}: choose one of {', '.join(SPLITS)}")
    paths = [path for path in find_image_files(root) if keep(path)]
    captions = captions_of(paths)  # over all splits: collection titles are found set-wide
    items = [
        (path, caption)
        for path, caption in zip(paths, captions)
        if split == "all" or split_of(_relative(root, path)) == split
    ]
    uncaptioned = sum(caption is None for _, caption in items)
    categories = sorted({category_of(root, path) for path in paths})
    return [(path, caption) for path, caption in items if caption is not None], uncaptioned, categories


def _finish(kind: str, root: Path, items, uncaptioned: int, categories: List[str], hint: str, **kwargs) -> CaptionedImagesSource:
    if not items:
        raise AnnobootError(f"{kind}: no captioned image found under {root} ({uncaptioned} without a caption); {hint}")
    if uncaptioned:
        logger.info("%s: left out %d image(s) without a usable caption", kind, uncaptioned)
    return CaptionedImagesSource(f"{kind}/{root.name}", root, items, categories, **kwargs)


def captioned_folder(root: str, split: str = "all", limit: Optional[int] = None, max_short_side: int = 256,
        max_pixels: int = MAX_IMAGE_PIXELS) -> CaptionedImagesSource:
    """Images with ``.txt`` caption twins under ``root`` (nested folders allowed)."""
    folder = Path(root)
    if not folder.is_dir():
        raise AnnobootError(f"captioned folder not found: {folder} (data.<stream>.root)")
    items, uncaptioned, categories = _collect(folder, split, lambda paths: [caption_from_txt_twin(p) for p in paths])
    hint = "put each caption in <image name>.txt beside its image"
    return _finish("captioned_folder", folder, items, uncaptioned, categories, hint, limit=limit, max_short_side=max_short_side,
                   max_pixels=max_pixels)


def _require_package_dir(path: Path, package: str) -> None:
    if not path.is_dir():
        raise AnnobootError(
            f"{path} not found: install the Debian package with "
            f"`apt-get install -y --no-install-recommends {package}` or point data.<stream>.root at a copy"
        )


def openclipart(root: Optional[str] = None, split: str = "train", limit: Optional[int] = None, max_short_side: int = 256,
        max_pixels: int = MAX_IMAGE_PIXELS) -> CaptionedImagesSource:
    """Open Clip Art PNGs captioned from their SVG twin (see :func:`openclipart_captions`);
    categories are the 22 top folders."""
    base = Path(root or OPENCLIPART_ROOT)
    png_root, svg_root = base / "png", base / "svg"
    _require_package_dir(png_root, "openclipart-png")
    _require_package_dir(svg_root, "openclipart-svg")

    def small_enough(path: str) -> bool:
        return os.path.getsize(path) <= _MAX_PNG_BYTES

    items, uncaptioned, categories = _collect(
        png_root, split, lambda paths: openclipart_captions(paths, png_root, svg_root), keep=small_enough
    )
    return _finish("openclipart", png_root, items, uncaptioned, categories, "is openclipart-svg installed?", limit=limit, max_short_side=max_short_side,
                   max_pixels=max_pixels)


def tuxpaint(root: Optional[str] = None, split: str = "train", limit: Optional[int] = None, max_short_side: int = 256,
        max_pixels: int = MAX_IMAGE_PIXELS) -> CaptionedImagesSource:
    """Tux Paint stamps: PNG + the English first line of ``<stamp>.txt``."""
    base = Path(root or TUXPAINT_ROOT)
    _require_package_dir(base, "tuxpaint-stamps-default")
    items, uncaptioned, categories = _collect(
        base, split, lambda paths: [caption_from_txt_twin(p) for p in paths], keep=lambda path: path.lower().endswith(".png")
    )
    return _finish("tuxpaint", base, items, uncaptioned, categories, "is tuxpaint-stamps-default installed?", limit=limit, max_short_side=max_short_side,
                   max_pixels=max_pixels)


CAPTIONED_SOURCES = {"captioned_folder": captioned_folder, "openclipart": openclipart, "tuxpaint": tuxpaint}

for _kind, _build in CAPTIONED_SOURCES.items():
    register_source(_kind)(
        lambda cfg, build=_build: build(cfg.root, split=cfg.split, limit=cfg.limit, max_short_side=cfg.max_short_side,
                                        max_pixels=cfg.max_pixels)
    )
