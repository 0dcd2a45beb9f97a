"""``annoboot data`` helpers: write shards from a folder, inspect a source."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from annoboot.data.captions import caption_from_txt_twin
from annoboot.data.decode import decode_image, failure_reason, load_image_file
from annoboot.data.image_folder import scan_image_files
from annoboot.data.shard_files import count_shard_samples, write_shards
from annoboot.data.shards import expand_shard_pattern
from annoboot.errors import AnnobootError


def folder_to_shards(folder: str, pattern: str, max_count: int = 10_000, captions: str = "txt") -> Dict[str, object]:
    """Pack the images of ``folder`` into tar shards, with captions from ``.txt`` twins
    (``captions="txt"``) or from a captioned set's own metadata (``"openclipart"``: the SVG
    twins' titles under ``folder``/svg; ``"tuxpaint"``), images without one left out then.
    Files that are not regular (FIFOs, sockets, devices: never opened) and files that cannot
    be read are left out and counted in the report."""
    from annoboot.data.captioned import CAPTIONED_SOURCES

    root = Path(folder)
    if not root.is_dir():
        raise AnnobootError(f"image folder not found: {folder}")
    if "%" not in pattern:
        raise AnnobootError(f"shard pattern '{pattern}' needs a %d-style field for the shard number, e.g. out/train-%06d.tar")
    report: Dict[str, object] = {}
    if captions in ("openclipart", "tuxpaint"):
        source = CAPTIONED_SOURCES[captions](folder, split="all")
        pairs = list(zip(source.paths, source.captions))
    elif captions == "txt":
        files = scan_image_files(root)
        if not files.paths:
            raise AnnobootError(f"no images under {folder}")
        pairs = [(path, caption_from_txt_twin(path)) for path in files.paths]
        report["skipped_non_regular_files"] = len(files.special)
    else:
        raise AnnobootError(f"--captions must be txt, openclipart or tuxpaint, got '{captions}'")
    count, shards, unreadable = write_shards(pairs, pattern, max_count)
    with_caption = sum(c is not None for _, c in pairs)
    report.update(samples=count, with_caption=with_caption, unreadable=unreadable, shards=shards)
    return report


def inspect_folder(folder: str, limit: Optional[int] = None, max_short_side: int = 1 << 30) -> Dict[str, object]:
    """Decode every image once: counts, decoded sizes and why the bad ones failed (with the
    reasons training counts them under), and how many non-regular files were left unopened."""
    root = Path(folder)
    if not root.is_dir():
        raise AnnobootError(f"image folder not found: {folder}")
    listing = scan_image_files(root)
    files = listing.paths[:limit]
    reasons: Counter = Counter()
    examples: Dict[str, str] = {}
    sides: List[Tuple[int, int]] = []
    for path in files:
        image, reason = load_image_file(path, max_short_side)
        if image is not None:
            sides.append((image.shape[1], image.shape[2]))
        else:
            reasons[reason] += 1
            examples.setdefault(reason, path)
    report: Dict[str, object] = {"files": len(files), "skipped_non_regular_files": len(listing.special)}
    report.update(_summary(sides, reasons, examples))
    return report


def inspect_shards(pattern: str, limit: Optional[int] = None, max_short_side: int = 1 << 30) -> Dict[str, object]:
    """Shard counts, then every sample's image decoded once (the first ``limit`` samples):
    the same report as :func:`inspect_folder`, examples named ``<shard>:<key>.<ext>``, and the
    shards that could not be read, by reason."""
    import io

    import webdataset as wds

    from annoboot.data.shard_failures import ShardFailures
    from annoboot.data.shard_samples import IMAGE_KEYS

    urls = expand_shard_pattern(pattern)
    report: Dict[str, object] = dict(count_shard_samples(urls))
    unreadable: Dict[str, str] = report.pop("unreadable_shards")  # type: ignore[assignment]
    reasons: Counter = Counter()
    examples: Dict[str, str] = {}
    sides: List[Tuple[int, int]] = []
    # The counting pass above names the unreadable shards; this one only needs to get past them.
    samples = wds.DataPipeline(wds.SimpleShardList(urls), ShardFailures(pattern, len(urls), stop=False).samples)
    for index, sample in enumerate(samples):
        if limit is not None and index >= limit:
            break
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        name = f"{sample.get('__url__')}:{sample.get('__key__')}.{key}"
        if key is None:
            reason: Optional[str] = "no image member"
        else:
            try:
                image = decode_image(io.BytesIO(sample[key]), max_short_side)
                sides.append((image.shape[1], image.shape[2]))
                continue
            except Exception as exc:  # the report names what went wrong, per reason
                reason = failure_reason(exc, len(sample[key]))
        reasons[reason] += 1
        examples.setdefault(reason, name)
    report.update(_summary(sides, reasons, examples))
    report["unreadable_shards"] = len(unreadable)
    shard_reasons = Counter(unreadable.values())
    report["unreadable_shards_by_reason"] = {
        r: {"count": n, "example": next(url for url, why in unreadable.items() if why == r)}
        for r, n in shard_reasons.most_common()
    }
    return report


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
        if key in ("bad_by_reason", "unreadable_shards_by_reason"):
            what = "bad" if key == "bad_by_reason" else "unreadable shards"
            for reason, info in value.items():  # type: ignore[union-attr]
                lines.append(f"  {what}: {info['count']:>6}  {reason}  (e.g. {info['example']})")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
