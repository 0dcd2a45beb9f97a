"""A run directory or checkpoint file -> its config and its method with the saved weights.

Apart from annoboot.commands so that annoboot.pretrained (load_encoder) and the commands can
both read runs without importing each other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import torch

from annoboot.config import Config
from annoboot.errors import AnnobootError
from annoboot.methods import Method, build_method
from annoboot.recipe import config_from_saved
from annoboot.runtime import resolve_device
from annoboot.train.checkpoint import load_checkpoint
from annoboot.train.run_lock import live_holder

log = logging.getLogger(__name__)


def load_run(path: str | Path, weights: str = "online",
             overrides: Optional[List[str]] = None) -> tuple[Config, Method, torch.device]:
    """A run directory or checkpoint file -> (its config with overrides, method with weights loaded)."""
    if weights not in ("online", "ema"):
        raise AnnobootError(f"--weights must be 'online' or 'ema', got '{weights}'")
    folder = Path(path) if Path(path).is_dir() else None
    holder = live_holder(folder) if folder is not None else None
    state = load_checkpoint(path)
    if holder is not None:
        log.warning("%s is still training (pid %s on %s): reading its newest complete checkpoint, step %s",
                    path, holder.get("pid", "?"), holder.get("host", "?"), state.get("step", "?"))
    if not isinstance(state.get("config"), dict) or "method" not in state:
        raise AnnobootError(f"{path} is not an annoboot training checkpoint (it holds no config or no weights)")
    cfg = config_from_saved(state["config"], overrides, origin=f"the config saved in {path}")
    device = resolve_device(cfg.train.device)
    method = build_method(cfg)
    if weights == "ema" and state.get("target") is None:
        raise AnnobootError(f"--weights ema: the run at {path} has no EMA target ({cfg.method.name} keeps none)")
    try:
        method.load_state_dict(state["method" if weights == "online" else "target"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise AnnobootError(
            f"the {weights} weights in {path} do not match the model its config builds "
            f"({cfg.model.backbone}, {cfg.method.name}): {' '.join(first[1:2] or first[:1]).strip()}"
        ) from None
    return cfg, method.to(device).eval(), device


__all__ = ["load_run"]
