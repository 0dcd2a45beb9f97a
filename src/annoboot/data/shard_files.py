"""Shard files as files: write image files into tar shards (``annoboot data write-shards``) and
count a shard set's samples from the tar headers (``annoboot data inspect``)."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import webdataset as wds

from annoboot.data.decode import failure_reason
from annoboot.data.shard_failures import local_size
from annoboot.data.shard_samples import IMAGE_KEYS

log = logging.getLogger(__name__)


def write_shards(
    files: List[Tuple[str, Optional[str]]], pattern: str, max_count: int = 10_000
) -> Tuple[int, List[str], int]:
    """Write (image path, caption or None) pairs into tar shards named by ``pattern`` (e.g.
    ``out/train-%06d.tar``). Image bytes are stored as they are (no re-encoding) under their
    extension (every one is in :data:`IMAGE_KEYS`); the key is the running index. Returns
    (samples written, shard paths, files that could not be read and were left out)."""
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    written: List[str] = []
    count = unreadable = 0
    with wds.ShardWriter(pattern, maxcount=max_count, verbose=0) as sink:
        for index, (path, caption) in enumerate(files):
            suffix = Path(path).suffix.lower().lstrip(".")
            suffix = "jpg" if suffix == "jpeg" else suffix
            try:
                data = Path(path).read_bytes()
            except OSError as exc:  # gone, or unreadable since it was listed
                log.warning("leaving out unreadable %s: %s", path, exc)
                unreadable += 1
                continue
            sample = {"__key__": f"{index:09d}", suffix: data}
            if caption is not None:
                sample["txt"] = caption
            sink.write(sample)
            count += 1
            if sink.fname not in written:
                written.append(sink.fname)
    return count, written, unreadable


def count_shard_samples(urls: List[str]) -> Dict[str, Any]:
    """Samples and image members of the shards, reading only the tar headers. A shard that
    cannot be read is counted as far as it could be, and listed in ``unreadable_shards``
    ({url: :func:`failure_reason`})."""
    samples, images = set(), 0
    unreadable: Dict[str, str] = {}
    for url in urls:
        try:
            # "r:" for plain tars: "r:*" would name every compression it tried in its error
            with tarfile.open(url, "r:" if url.endswith(".tar") else "r:*") as tar:
                for member in tar:
                    key, _, ext = member.name.rpartition(".")
                    samples.add((url, key))
                    images += ext.lower() in IMAGE_KEYS
        except (tarfile.TarError, OSError, EOFError) as exc:
            unreadable[url] = failure_reason(exc, local_size(url))
    return {"shards": len(urls), "samples": len(samples), "image_members": images, "unreadable_shards": unreadable}
