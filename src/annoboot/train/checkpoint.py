"""Step-based, atomic, verified training checkpoints.

One file per checkpoint, ``ckpt-<step>.pt``, written to a temporary name and renamed into
place, so a run killed at any moment leaves either the old or the new checkpoint, never half
of one. It holds everything needed to continue exactly: model, EMA target, optimizer, the
data streams' positions, RNG states and the config.

Integrity: ``torch.save`` writes a zip archive whose every record carries a CRC-32 of its
bytes, which ``torch.load`` never checks. :func:`verify_checkpoint` checks them (and that the
weights are finite), so a flipped byte or a truncated file is found before training resumes
from it; :func:`load_latest_valid` then falls back to the newest checkpoint that passes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from annoboot.errors import AnnobootError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def checkpoint_step(path: Path) -> int:
    match = _NAME.match(Path(path).name)
    if match is None:
        raise AnnobootError(f"not a checkpoint file name (ckpt-<step>.pt): {path}")
    return int(match.group(1))


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
    """Write ``state`` as the checkpoint of ``step``; then keep the newest ``keep`` (0: all) of
    those up to ``step``. A failed write (disk full, no permission) removes its partial file,
    leaves every earlier checkpoint as it was and raises an AnnobootError naming the folder."""
    path = checkpoint_path(run_dir, step)
    folder = path.parent
    tmp = path.with_suffix(".pt.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "free space unknown"
        previous = latest_checkpoint(run_dir)
        kept = f"; the previous checkpoint {previous.name} is kept" if previous is not None else ""
        raise AnnobootError(f"cannot write checkpoint {path.name} in {folder} ({free}): {reason}{kept}") from None
    _prune(run_dir, step, keep)
    return path


def _prune(run_dir: Path, step: int, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints up to ``step``. Later steps are never
    touched: after a fallback resume they are the skipped ones, kept for inspection, and the
    one just written is always the newest that stays."""
    if keep <= 0:
        return
    earlier = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) <= step]
    for old in earlier[:-keep]:
        old.unlink(missing_ok=True)


def verify_checkpoint(path: Path | str) -> Optional[str]:
    """None if ``path`` is an intact checkpoint archive, else why not (one line).

    Checks every record's CRC-32 (bytes changed or cut off) without loading tensors.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        return f"not a complete checkpoint archive ({exc}; truncated?)"
    except (OSError, EOFError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if bad is not None:
        return f"record '{bad}' fails its CRC-32 check (bytes changed on disk)"
    return None


def nonfinite_tensors(weights: Optional[Dict[str, torch.Tensor]]) -> List[str]:
    """Names of the floating-point tensors in ``weights`` holding NaN or infinity."""
    names = [k for k, v in (weights or {}).items() if torch.is_tensor(v) and v.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(weights[k]).all() for k in names]).tolist()  # one host sync
    return [k for k, ok in zip(names, finite) if not ok]


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """A checkpoint file, verified; or for a run directory its newest valid checkpoint."""
    path = Path(path)
    if path.is_dir():
        return load_latest_valid(path, map_location)[1]
    if not path.is_file():
        raise AnnobootError(f"checkpoint not found: {path}")
    return _load_verified(path, map_location)


def _load_verified(path: Path, map_location: str | torch.device) -> Dict[str, Any]:
    problem = verify_checkpoint(path)
    if problem is not None:
        raise AnnobootError(f"checkpoint {path} is damaged: {problem}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise AnnobootError(f"cannot read checkpoint {path}: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise AnnobootError(f"checkpoint {path} holds a {type(state).__name__}, not an annoboot training state")
    bad = nonfinite_tensors(state.get("method"))
    if bad:
        raise AnnobootError(f"checkpoint {path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]})")
    return state


def load_latest_valid(run_dir: Path | str, map_location: str | torch.device = "cpu") -> Tuple[Path, Dict[str, Any]]:
    """The newest checkpoint of ``run_dir`` that verifies and loads, and its state; each newer
    one that does not is logged with its reason and skipped."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise AnnobootError(f"no checkpoint in run directory {run_dir} (expected {run_dir}/checkpoints/ckpt-*.pt)")
    skipped = []
    for path in reversed(found):
        try:
            state = _load_verified(path, map_location)
        except AnnobootError as exc:
            log.warning("skipping %s", exc)
            skipped.append(str(exc))
            continue
        if skipped:
            log.warning("using %s, the newest valid checkpoint (%d newer skipped)", path.name, len(skipped))
        return path, state
    raise AnnobootError(f"no valid checkpoint in {run_dir}: " + "; ".join(skipped))
