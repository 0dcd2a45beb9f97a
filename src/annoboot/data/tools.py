"""``annoboot data`` helpers: write shards from a folder, inspect a source."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from annoboot.data.image_folder import decode_image, find_image_files
from annoboot.data.shards import count_shard_samples, expand_shard_pattern, write_shards
from annoboot.errors import AnnobootError


def caption_beside(image_path: str) -> Optional[str]:
    """First line of ``<image stem>.txt`` next to the image, if there is one."""
    text = Path(image_path).with_suffix(".txt")
    if not text.is_file():
        return None
    lines = text.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[0].strip() if lines else None


def folder_to_shards(folder: str, pattern: str, max_count: int = 10_000, captions: str = "txt") -> Dict[str, object]:
    """Pack the images of ``folder`` into tar shards, with captions from ``.txt`` twins
    (``captions="txt"``) or from a captioned set's own metadata (``"openclipart"``: the SVG
    twins' titles under ``folder``/svg; ``"tuxpaint"``), images without one left out then."""
    from annoboot.data.captioned import CAPTIONED_SOURCES

    root = Path(folder)
    if not root.is_dir():
        raise AnnobootError(f"image folder not found: {folder}")
    if "%" not in pattern:
        raise AnnobootError(f"shard pattern '{pattern}' needs a %d-style field for the shard number, e.g. out/train-%06d.tar")
    if captions in ("openclipart", "tuxpaint"):
        source = CAPTIONED_SOURCES[captions](folder, split="all")
        pairs = list(zip(source.paths, source.captions))
    elif captions == "txt":
        files = find_image_files(root)
        if not files:
            raise AnnobootError(f"no images under {folder}")
        pairs = [(path, caption_beside(path)) for path in files]
    else:
        raise AnnobootError(f"--captions must be txt, openclipart or tuxpaint, got '{captions}'")
    count, shards = write_shards(pairs, pattern, max_count)
    return {"samples": count, "with_caption": sum(c is not None for _, c in pairs), "shards": shards}


def inspect_folder(folder: str, limit: Optional[int] = None, max_short_side: int = 1 << 30) -> Dict[str, object]:
    """Decode every image once: counts, decoded sizes and why the bad ones failed."""
    root = Path(folder)
    if not root.is_dir():
        raise AnnobootError(f"image folder not found: {folder}")
    files = find_image_files(root)[:limit]
    reasons: Counter = Counter()
    examples: Dict[str, str] = {}
    sides: List[Tuple[int, int]] = []
    for path in files:
        try:
            image = decode_image(path, max_short_side)
            sides.append((image.shape[1], image.shape[2]))
        except Exception as exc:  # the report names what went wrong, per reason
            reason = _reason(exc, Path(path).stat().st_size)
            reasons[reason] += 1
            examples.setdefault(reason, path)
    report: Dict[str, object] = {"files": len(files)}
    report.update(_summary(sides, reasons, examples))
    return report


def inspect_shards(pattern: str, limit: Optional[int] = None, max_short_side: int = 1 << 30) -> Dict[str, object]:
    """Shard counts, then every sample's image decoded once (the first ``limit`` samples):
    the same report as :func:`inspect_folder`, examples named ``<shard>:<key>.<ext>``."""
    import io

    import webdataset as wds

    from annoboot.data.shards import IMAGE_KEYS

    urls = expand_shard_pattern(pattern)
    report: Dict[str, object] = dict(count_shard_samples(urls))
    reasons: Counter = Counter()
    examples: Dict[str, str] = {}
    sides: List[Tuple[int, int]] = []
    samples = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=wds.warn_and_continue))
    for index, sample in enumerate(samples):
        if limit is not None and index >= limit:
            break
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        name = f"{sample.get('__url__')}:{sample.get('__key__')}.{key}"
        try:
            if key is None:
                raise ValueError("no image member")
            image = decode_image(io.BytesIO(sample[key]), max_short_side)
            sides.append((image.shape[1], image.shape[2]))
        except Exception as exc:  # the report names what went wrong, per reason
            reason = _reason(exc, len(sample[key]) if key else -1)
            reasons[reason] += 1
            examples.setdefault(reason, name)
    report.update(_summary(sides, reasons, examples))
    return report


def _reason(exc: BaseException, num_bytes: int) -> str:
    if num_bytes == 0:
        return "empty file"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}" if str(exc) else type(exc).__name__


def _summary(sides: List[Tuple[int, int]], reasons: Counter, examples: Dict[str, str]) -> Dict[str, object]:
    report: Dict[str, object] = {"decodable": len(sides), "bad": sum(reasons.values())}
    if sides:
        shorts = [min(s) for s in sides]
        report["short_side"] = {"min": min(shorts), "median": statistics.median(shorts), "max": max(shorts)}
    report["bad_by_reason"] = {r: {"count": n, "example": examples[r]} for r, n in reasons.most_common()}
    return report


def inspect_source(spec: str, limit: Optional[int] = None) -> Dict[str, object]:
    """A folder path or a shard pattern (anything with '.tar')."""
    if ".tar" in spec:
        return inspect_shards(spec, limit)
    return inspect_folder(spec, limit)


def format_report(report: Dict[str, object]) -> str:
    lines = []
    for key, value in report.items():
        if key == "bad_by_reason":
            for reason, info in value.items():  # type: ignore[union-attr]
                lines.append(f"  bad: {info['count']:>6}  {reason}  (e.g. {info['example']})")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
