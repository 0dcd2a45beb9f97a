"""Decoding one image, wherever it comes from (a file, a shard member, JPEG bytes for the device).

Every decoder returns RGB uint8 (3, H, W) with its short side capped, and nothing else is done
to it (crops and augmentations are rendered later, on the device). One rule for each step, shared
by every source, ``annoboot data inspect`` and ``data write-shards``:

- open: :func:`open_image` reads the header and refuses an image declaring more than
  :data:`MAX_IMAGE_PIXELS` pixels (:class:`ImageTooLarge`) before any decoding;
- orientation: the EXIF tag is applied (cameras store rotated pixels plus a tag);
- colour: any Pillow mode becomes RGB (:func:`to_rgb`; alpha composited onto white);
- size cap: :func:`capped_size` (PIL) and :func:`cap_short_side` (tensors on the device);
- failure: :func:`failure_reason` names why an input could not be used, the same way everywhere.

Plain JPEGs can instead be decoded in batches on the training device (data/device_decode.py),
falling back to this CPU decoder for what the device rejects. Files are read through
data/timed_reads.py (a read that hangs stops naming the file).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from annoboot.data.timed_reads import ReadTimedOut, read_file

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# Transparent pixels are composited onto white: clip art and photo cut-outs are drawn for a
# light page, and their dark outlines would vanish on black.
ALPHA_BACKGROUND = (255, 255, 255)

_EXIF_ORIENTATION = 0x0112


# Images declaring more pixels than this are bad files, rejected from their header before any
# decoding: an 8192 x 8192 image. PIL only warns from 89M pixels (and decodes in full) and
# refuses from 179M; a scraped set's few giant scans would cost seconds and gigabytes each.
MAX_IMAGE_PIXELS = 8192 * 8192


class ImageTooLarge(ValueError):
    """An image whose header declares more than the pixel cap; ``max_pixels`` is that cap."""

    def __init__(self, width: int, height: int, max_pixels: int):
        super().__init__(f"image of {width} x {height} pixels exceeds the {max_pixels:,}-pixel cap")
        self.max_pixels = max_pixels


def capped_size(width: int, height: int, max_short_side: int) -> Tuple[int, int]:
    """(width, height) with the short side at most ``max_short_side``, aspect kept."""
    short_side = min(width, height)
    if short_side <= max_short_side:
        return width, height
    if width <= height:
        return max_short_side, max(1, round(height * max_short_side / width))
    return max(1, round(width * max_short_side / height)), max_short_side


def _high_depth_to_gray8(image: Image.Image) -> Image.Image:
    """16-bit ('I;16*'), 32-bit int ('I') or float ('F') grayscale -> 8-bit 'L'.

    16-bit data is scaled by its nominal range (65535 -> 255), so a dark image stays dark.
    'I' values within [0, 65535] are taken as 16-bit (Pillow opens many 16-bit files as 'I');
    'F' values within [0, 1] as fractions; anything else is stretched from its min to its max.
    """
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values.astype(np.float64))
        if values.min() >= 0 and values.max() <= 1:
            gray = np.rint(values * 255)
        else:
            gray = _stretch(values)
    elif image.mode.startswith("I;16") or (values.min() >= 0 and values.max() <= 65535):
        # Integer rounding of x * 255 / 65535, exact at both ends of the range.
        gray = (values.astype(np.int64) * 255 + 32767) // 65535
    else:
        gray = _stretch(values.astype(np.float64))
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return np.rint((values - low) * (255.0 / (high - low)))


def _has_alpha(image: Image.Image) -> bool:
    # 'transparency' in info marks a transparent palette entry or colour in P, L and RGB images.
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 'RGB'. Alpha is composited onto :data:`ALPHA_BACKGROUND`.

    Grayscale and palette images are expanded, CMYK/YCbCr converted by Pillow, and
    high-bit-depth grayscale scaled to 8 bits by :func:`_high_depth_to_gray8`.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "F" or image.mode.startswith("I"):
        return _high_depth_to_gray8(image).convert("RGB")
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a mangled EXIF block should not cost us the pixels
        return 1


# Parts of exception messages that differ between files with the same problem.
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|<_io\.\w+ name=[^>]*>")
_QUOTED_PATH = re.compile(r"""(['"])[^'"]*[/\\][^'"]*\1""")
_BARE_PATH = re.compile(r"(?<![\w<])(?:[A-Za-z]:)?[/\\][^\s'\",:;)]+")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def failure_reason(exc: BaseException, num_bytes: int) -> str:
    """A short, stable name for why a file, sample or shard could not be used: the same failure
    gets the same name in every file, so counts per reason stay few and readable (training logs,
    `annoboot data inspect`). ``num_bytes``: the input's size (0: empty; negative: unknown)."""
    if num_bytes == 0:
        return "empty file"
    if isinstance(exc, ImageTooLarge):
        return f"over the {exc.max_pixels:,}-pixel cap"
    if isinstance(exc, Image.DecompressionBombError):
        return "decompression bomb"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():  # PIL says "truncated" and "Truncated"
        return "truncated"
    text = str(exc)
    if text.startswith("(") and len(exc.args) > 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # webdataset appended the stream and URL to the args: keep the message
    message = text.splitlines()[0].split(" @ ")[0] if text else ""  # " @ <stream>": webdataset's too
    message = _OBJECT_REPR.sub("", message)
    message = _QUOTED_PATH.sub("", message)
    message = _BARE_PATH.sub("", message)
    message = _ADDRESS.sub("", message)
    message = " ".join(message.split()).strip(" :,;")[:80]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def open_image(source: "str | io.BytesIO", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """``Image.open`` (headers only), raising :class:`ImageTooLarge` over ``max_pixels``."""
    with warnings.catch_warnings():
        # Our cap is lower than the size PIL warns at; its warning would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(width, height, max_pixels)
    return image


def decode_image(path: "str | io.BytesIO", max_short_side: int, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Decode one file to (3, H, W) uint8, contiguous, with min(H, W) <= max_short_side.

    Raises whatever PIL raises on a bad file, and :class:`ImageTooLarge` for one declaring
    more than ``max_pixels`` pixels; :func:`load_image_file` turns that into a skip reason.
    """
    with open_image(path, max_pixels) as image:
        if image.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the cap allows: far less work.
            image.draft(None, capped_size(*image.size, max_short_side))
        image.load()
        if exif_orientation(image) != 1:
            # Cameras store rotated pixels plus a tag; decoding means applying the tag.
            image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        size = capped_size(*rgb.size, max_short_side)
        if size != rgb.size:
            # Pillow's resampling filters antialias when shrinking; reducing_gap first box-reduces
            # by an integer factor, which is fast and visually the same.
            rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        pixels_hwc = np.asarray(rgb)  # read-only: a view of Pillow's bytes
    # copy() (not ascontiguousarray, which returns a 1x1 image's read-only view as it is): a
    # writable array, so torch neither warns nor shares memory it may not write.
    return torch.from_numpy(pixels_hwc.transpose(2, 0, 1).copy())


def load_image_file(path: str, max_short_side: int, max_pixels: int = MAX_IMAGE_PIXELS,
                    read_timeout: float = 0.0) -> Tuple[Optional[torch.Tensor], Optional[str]]:
    """(image, None), or (None, :func:`failure_reason`) when the file cannot be decoded.
    Raises :class:`ReadTimedOut` when reading it takes longer than ``read_timeout`` seconds."""
    num_bytes = -1
    try:
        data = read_file(path, read_timeout)
        num_bytes = len(data)
        return decode_image(io.BytesIO(data), max_short_side, max_pixels), None
    except ReadTimedOut:
        raise
    except Exception as exc:  # PIL plugins raise OSError, ValueError, SyntaxError, struct.error, ...
        logger.debug("skipping undecodable image %s: %s: %s", path, type(exc).__name__, exc)
        return None, failure_reason(exc, num_bytes)
