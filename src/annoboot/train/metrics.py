"""Metrics out of the training loop: TensorBoard, a JSON-lines file and the progress bar."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from annoboot.checked_files import is_finite_number, read_jsonl_rows
from annoboot.methods.base import RATE_DENOMINATOR, RATE_NUMERATOR

log = logging.getLogger(__name__)


class MetricAccumulator:
    """Sums per-step metric tensors on the device; one host sync per logging interval."""

    def __init__(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, metrics: Dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.steps += 1

    def pop(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Dict[str, float]:
        """Means over the interval; rate metrics (``methods.base.rate_metric``) their summed ratio.

        ``reduce`` (e.g. a mean over ranks) is applied to all sums at once: one collective.
        """
        if not self.sums:
            return {}
        keys = list(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys])
        if reduce is not None:
            stacked = reduce(stacked)
        values = stacked.cpu().tolist()
        raw = dict(zip(keys, values))
        out: Dict[str, float] = {}
        for key, value in raw.items():
            if key.endswith(RATE_NUMERATOR):
                name = key[: -len(RATE_NUMERATOR)]
                denominator = raw[name + RATE_DENOMINATOR]
                if denominator > 0:
                    out[name] = value / denominator
            elif not key.endswith(RATE_DENOMINATOR):
                out[key] = value / self.steps
        self.sums, self.steps = {}, 0
        return out


class RunLogger:
    """Writes scalars to TensorBoard and ``metrics.jsonl`` under the run directory."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, show_progress: bool):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run logs again the steps after its checkpoint: drop what the killed run
        # logged past it, in TensorBoard (purge_step) and in metrics.jsonl.
        purge = start_step + 1 if start_step > 0 else None
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        path = self.run_dir / "metrics.jsonl"
        # Wall time and views seen add up over the run's resumes (the time a killed process spent
        # after its last checkpoint is not counted: that work is done again).
        self.train_seconds, self.views_seen = 0.0, 0.0
        if purge is not None and path.exists():
            kept = _drop_rows_after(path, start_step)
            if kept:
                self.train_seconds = _number(kept[-1], "time/train_seconds")
                self.views_seen = _number(kept[-1], "progress/views_seen")
        self.jsonl = open(path, "a", encoding="utf-8")
        # A slow moving average of step times (about the last 50 steps) keeps the ETA steady.
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not show_progress, unit="step", dynamic_ncols=True,
                        smoothing=0.02)
        self.last_time = time.perf_counter()
        self.last_step = start_step

    def log(self, step: int, scalars: Dict[str, float], images_per_step: int, views_per_step: int) -> Dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self.last_step, 1)
        seconds = max(now - self.last_time, 1e-9)
        scalars = dict(scalars)
        scalars["speed/images_per_s"] = steps * images_per_step / seconds
        scalars["speed/views_per_s"] = steps * views_per_step / seconds
        self.train_seconds += seconds
        self.views_seen += steps * views_per_step
        scalars["time/train_seconds"] = self.train_seconds
        scalars["progress/views_seen"] = self.views_seen
        self.last_time, self.last_step = now, step
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        loss = scalars.get("loss/total")
        rate = f"{scalars['speed/images_per_s']:.0f} img/s over the last {steps} steps"
        self.bar.set_postfix_str(rate if loss is None else f"loss {loss:.3f}, {rate}")
        return scalars

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.jsonl.close()


def _number(row: dict, key: str) -> float:
    """row[key] as a finite float; 0 where it is missing or not a number (a damaged row)."""
    value = row.get(key, 0.0)
    return float(value) if is_finite_number(value) else 0.0


def _drop_rows_after(path: Path, step: int) -> List[dict]:
    """Keep the rows of ``path`` (JSON lines with a "step") up to ``step``; rewritten atomically.
    Returns the rows kept. A line cut short by the kill, or damaged, is dropped (and counted)."""
    rows, damaged = read_jsonl_rows(path, "the run's metrics log")
    if damaged > 1:  # one torn line is what a kill leaves; more is damage worth a word
        log.warning("%s: dropped %d unreadable lines on resume", path, damaged)
    rows = [row for row in rows if row["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)
    return rows
