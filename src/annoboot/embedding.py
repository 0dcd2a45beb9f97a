"""Embed a whole folder with a trained encoder (``annoboot embed``), resumably.

The folder is embedded in chunks of ``chunk_size`` files, each written to ``<out>.parts/`` as it
completes, so a killed run of a large folder resumes at its first missing chunk; unreadable files
are skipped and counted by reason. The result is one ``.npz``: ``names`` (paths relative to the
folder), ``embeddings`` (N, D) float32, ``meta`` (a JSON string: encoder, weights, image size,
folder, skips) and, for caption models, ``joint`` (the joint space). similar.py reads it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from annoboot.checked_files import read_npz
from annoboot.data.batching import LoaderItem, pad_collate
from annoboot.data.image_folder import ImageFolderSource
from annoboot.data.workers import decode_workers
from annoboot.errors import AnnobootError
from annoboot.pretrained import PretrainedEncoder

log = logging.getLogger(__name__)


@dataclass
class EmbedReport:
    out: Path
    embedded: int
    skipped: Dict[str, int]
    seconds: float
    chunks_reused: int

    def __str__(self) -> str:
        skipped = sum(self.skipped.values())
        why = f" ({', '.join(f'{n} {r}' for r, n in sorted(self.skipped.items()))})" if skipped else ""
        reused = f"; {self.chunks_reused} chunk(s) reused from an earlier run" if self.chunks_reused else ""
        return (f"wrote {self.out}: {self.embedded} images embedded, {skipped} skipped{why}, "
                f"{self.seconds:.1f} s{reused}")


class _FolderFiles(Dataset):
    def __init__(self, source: ImageFolderSource, indices: range):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[Optional[torch.Tensor], Optional[str], int]:
        index = self.indices[i]
        image, reason = self.source.load(index)
        return image, reason, index


def folder_batches(source: ImageFolderSource, indices: range, batch_size: int, workers: int = 0):
    """(batch or None, indices of its images, [(index, reason) of the undecodable]) per batch."""
    return DataLoader(_FolderFiles(source, indices), batch_size=batch_size, num_workers=workers, collate_fn=_collate)


def _collate(items):
    good = [LoaderItem(image) for image, _, _ in items if image is not None]
    batch = pad_collate(good)[0] if good else None
    return batch, [index for image, _, index in items if image is not None], [(index, reason) for image, reason, index in items if image is None]


def embed_folder(encoder: PretrainedEncoder, folder: str | Path, out: str | Path, batch_size: int = 256,
                 chunk_size: int = 4096, num_workers: Optional[int] = None, progress: bool = True) -> EmbedReport:
    """Embed every image under ``folder`` (recursively, sorted) into ``out`` (.npz); resumable."""
    started = time.perf_counter()
    out = Path(out)
    if out.suffix != ".npz":
        raise AnnobootError(f"--out must end in .npz, got {out}")
    source = ImageFolderSource(folder, max_short_side=max(encoder.img_size, 32))
    root = Path(source.root)
    names = [str(Path(p).relative_to(root)) for p in source.paths]
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    workers = decode_workers(num_workers)
    chunks = math.ceil(len(names) / chunk_size)
    from tqdm.auto import tqdm

    reused = 0
    # A context: an error closes the bar first, so its message starts a line of its own.
    with tqdm(total=len(names), unit="img", desc=f"embed {root.name}", disable=not progress) as bar:
        for c in range(chunks):
            indices = range(c * chunk_size, min((c + 1) * chunk_size, len(names)))
            part = parts / f"part-{c:06d}.npz"
            if _part_matches(part, names[indices.start : indices.stop], joint=encoder.text is not None):
                reused += 1
            else:
                _embed_chunk(encoder, source, indices, names, part, batch_size, workers)
            bar.update(len(indices))

    embeddings, joint, kept, skipped = [], [], [], Counter()
    for c in range(chunks):
        part = _read_part(parts / f"part-{c:06d}.npz", joint=encoder.text is not None)
        embeddings.append(part["embeddings"])
        if encoder.text is not None:
            joint.append(part["joint"])
        kept.extend(part["names"][part["kept"]].tolist())
        skipped.update(json.loads(str(part["skipped"])))
    if not kept:
        raise AnnobootError(f"no image under {root} could be decoded ({dict(skipped)})")
    meta = {"encoder": encoder.source, "weights": encoder.weights, "img_size": encoder.img_size,
            "folder": str(root.resolve()), "skipped": dict(skipped)}
    tmp = out.with_name(out.name + ".tmp.npz")
    arrays = {"joint": np.concatenate(joint)} if joint else {}  # caption models: the joint space, for text search
    np.savez(tmp, names=np.array(kept), embeddings=np.concatenate(embeddings), meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(out)
    shutil.rmtree(parts)
    return EmbedReport(out, len(kept), dict(skipped), time.perf_counter() - started, reused)


# A resumable part of `annoboot embed`: one chunk's names, which of them decoded (kept), their
# features (and joint-space features for caption models) and the skip reasons as JSON.
PART_ARRAYS = {"names": ("U", 1), "kept": ("b", 1), "embeddings": ("f", 2), "skipped": ("U", 0), "joint": ("f", 2)}


def _read_part(part: Path, joint: bool) -> Dict[str, np.ndarray]:
    arrays = read_npz(part, "part of an unfinished `annoboot embed`", PART_ARRAYS, optional=() if joint else ("joint",))
    rows = {len(arrays["names"]), len(arrays["kept"])}
    kept = int(arrays["kept"].sum())
    if len(rows) > 1 or arrays["embeddings"].shape[0] != kept or (joint and arrays["joint"].shape[0] != kept):
        raise AnnobootError(f"{part}: its arrays disagree on the number of images (part of an unfinished `annoboot embed`)")
    return arrays


def _part_matches(part: Path, names: List[str], joint: bool = False) -> bool:
    """Whether ``part`` is an intact part for these names (else it is computed again)."""
    if part.exists() and not part.is_file():
        raise AnnobootError(f"{part}: not a file, where `annoboot embed` keeps a part of its work: move it away")
    if not part.is_file():
        return False
    try:
        return _read_part(part, joint)["names"].tolist() == names
    except AnnobootError:  # cut short by a kill, or damaged: computed again
        return False


def _embed_chunk(encoder: PretrainedEncoder, source: ImageFolderSource, indices: range, names: List[str], part: Path,
                 batch_size: int, workers: int) -> None:
    vectors: List[torch.Tensor] = [torch.empty(0, encoder.encoder.width)]
    joint: List[torch.Tensor] = [torch.empty(0, encoder.text.settings["embed_dim"])] if encoder.text is not None else []
    kept: List[int] = []
    reasons: Counter = Counter()
    for batch, good, bad in folder_batches(source, indices, batch_size, workers):
        for index, reason in bad:
            log.debug("skipping %s: %s", names[index], reason)
            reasons[reason or "unreadable"] += 1
        if batch is not None:
            pooled, projected = encoder._pooled(batch, joint=encoder.text is not None)
            vectors.append(pooled)
            if projected is not None:
                joint.append(projected)
            kept.extend(good)
    mask = np.zeros(len(indices), dtype=bool)
    mask[[i - indices.start for i in kept]] = True
    tmp = part.with_name(part.name + ".tmp.npz")
    arrays = {"joint": torch.cat(joint).numpy()} if joint else {}
    np.savez(tmp, names=np.array(names[indices.start : indices.stop]), kept=mask, embeddings=torch.cat(vectors).numpy(),
             skipped=np.array(json.dumps(dict(reasons))), **arrays)
    tmp.replace(part)


__all__ = ["EmbedReport", "embed_folder", "folder_batches"]
