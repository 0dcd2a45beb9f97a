"""The one caption rule every captioned source follows: ``.txt`` twins beside images (folders,
Tux Paint stamps), the ``txt`` member of a shard sample, Open Clip Art titles, and what
``annoboot data write-shards`` packs (so a caption reads back from a shard as it was written).

A caption is the first non-empty line of its text, underscores read as spaces, whitespace
collapsed; an empty caption or a placeholder title ("untitled", "drawing", ...) is no caption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

# Titles that say nothing about the image (Open Clip Art's placeholders and library names).
_JUNK_TITLES = {"", "untitled", "open clip art library", "openclipart", "image", "drawing"}


def clean_caption(text: str) -> Optional[str]:
    """One caption: underscores as spaces, whitespace (newlines too) collapsed; None when empty or
    a placeholder. For a title or a name; a text file's caption is its first line (below)."""
    text = " ".join(text.replace("_", " ").split())
    return None if text.lower().strip(" .") in _JUNK_TITLES else text


def caption_from_text(text: str) -> Optional[str]:
    """The caption of a caption file or member: its first non-empty line, cleaned."""
    return clean_caption(next((line for line in text.splitlines() if line.strip()), ""))


def caption_from_txt_twin(image_path: str) -> Optional[str]:
    """The caption in ``<image stem>.txt`` beside the image (Tux Paint's format too), or None."""
    text_path = Path(image_path).with_suffix(".txt")
    if not text_path.is_file():  # missing, or a FIFO, whose open would block: no caption
        return None
    try:
        return caption_from_text(text_path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def sample_caption(sample: Dict[str, Any]) -> Optional[str]:
    """The caption in a shard sample's ``txt`` member, or None when it has none."""
    raw = sample.get("txt")
    if raw is None:
        return None
    return caption_from_text(raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw))


__all__ = ["caption_from_text", "caption_from_txt_twin", "clean_caption", "sample_caption"]
