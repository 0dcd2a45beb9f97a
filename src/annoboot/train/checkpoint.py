"""Step-based, atomic training checkpoints.

One file per checkpoint, ``ckpt-<step>.pt``, written to a temporary name and renamed into
place, so a run killed at any moment leaves either the old or the new checkpoint, never half
of one. It holds everything needed to continue exactly: model, EMA target, optimizer, the
data streams' positions, RNG states and the config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from annoboot.errors import AnnobootError

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, state: Dict[str, Any], keep: int = 2) -> Path:
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run directory: its latest checkpoint
        found = latest_checkpoint(path)
        if found is None:
            raise AnnobootError(f"no checkpoint in run directory {path} (expected {path}/checkpoints/ckpt-*.pt)")
        path = found
    if not path.is_file():
        raise AnnobootError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise AnnobootError(f"cannot read checkpoint {path}: {exc}") from None
