"""Training curves and the IoU-bucketed bootstrap agreement, drawn from a run's ``metrics.jsonl``.

``metrics.jsonl`` (written by :class:`annoboot.train.metrics.RunLogger`) holds one JSON object
per logged step: ``step``, the losses (``loss/total``, ``loss/<base>``, ``loss/bootstrap``),
``schedule/lr``, and for annotation-bootstrapping runs ``ab/target_entropy`` and the agreement
rates ``ab_agreement/iou_<bucket>``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

from matplotlib.figure import Figure

from annoboot.errors import AnnobootError
from annoboot.methods.base import RATE_DENOMINATOR, RATE_NUMERATOR
from annoboot.methods.bootstrapping import IOU_NAMES

Record = Dict[str, float]


def read_metrics(path: str | Path) -> List[Record]:
    """The records of a ``metrics.jsonl`` file, in file order.

    A torn last line (a run killed mid-write) is dropped; any other unreadable line is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnobootError(f"no metrics file at {path}: is this a run directory written by `annoboot pretrain`?")
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    records: List[Record] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            if number == len(lines):
                break
            reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "not a JSON object"
            raise AnnobootError(f"{path}, line {number}: {reason} ({str(exc).splitlines()[0][:80]})") from None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise AnnobootError(f"{path}, line {number}: expected a JSON object with an integer 'step' key")
        records.append(record)
    if not records:
        raise AnnobootError(f"{path} holds no logged steps yet (the trainer writes one every train.log_every steps)")
    return records


def series(records: List[Record], key: str) -> tuple[List[float], List[float]]:
    """(steps, values) of ``key`` over the records that hold a finite value for it."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(float(record["step"]))
            values.append(float(value))
    return steps, values


def agreement_series(records: List[Record]) -> Dict[str, tuple[List[float], List[float]]]:
    """Per IoU bucket: (steps, top-1 agreement rate), in bucket order; buckets never logged are left out.

    Reads the logger's rates ``ab_agreement/iou_<b>``; their raw sums (as a method returns them
    before the logger reduces them, :func:`annoboot.methods.base.rate_metric`) are turned into rates too.
    """
    out: Dict[str, tuple[List[float], List[float]]] = {}
    for name in IOU_NAMES:
        steps, rates = [], []
        for record in records:
            rate = record.get(f"ab_agreement/iou_{name}")
            if rate is None:
                key = f"ab_agreement/iou_{name}"
                hits, count = record.get(key + RATE_NUMERATOR), record.get(key + RATE_DENOMINATOR)
                rate = hits / count if hits is not None and count else None
            if rate is not None and math.isfinite(rate):
                steps.append(float(record["step"]))
                rates.append(float(rate))
        if steps:
            out[name] = (steps, rates)
    return out


def plot_curves(records: List[Record], out: str | Path, title: str = "") -> Path:
    """Losses, learning rate and (AB runs) the target entropy against the step, as one PNG."""
    loss_keys = [k for k in ("loss/total",) if _has(records, k)]
    loss_keys += sorted(k for k in _keys(records) if k.startswith("loss/") and k not in ("loss/total", "loss/bootstrap"))
    loss_keys += [k for k in ("loss/bootstrap",) if _has(records, k)]
    panels = []
    if loss_keys:
        panels.append(("loss", loss_keys))
    if _has(records, "schedule/lr"):
        panels.append(("learning rate", ["schedule/lr"]))
    if _has(records, "ab/target_entropy"):
        panels.append(("TD-target entropy (nats)", ["ab/target_entropy"]))
    if not panels:
        raise AnnobootError("metrics.jsonl has no loss/*, schedule/lr or ab/target_entropy values to draw")

    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    for ax, (label, keys) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            steps, values = series(records, key)
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=key.split("/", 1)[-1])
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_agreement(records: List[Record], out: str | Path, title: str = "") -> Optional[Path]:
    """Top-1 agreement of predicted and target annotation per source/target IoU bucket, over training.

    Returns the PNG's path, or None when the run logged no agreement (a run without bootstrapping).
    """
    buckets = agreement_series(records)
    if not buckets:
        return None
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, (steps, rates) in buckets.items():
        ax.plot(steps, rates, marker="." if len(steps) < 30 else None, label=f"IoU {name}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 agreement")
    ax.set_title(title or "bootstrap agreement by source/target IoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="source/target", title_fontsize="small")
    return _save(fig, out)


def _keys(records: List[Record]) -> set:
    return set().union(*(record.keys() for record in records))


def _has(records: List[Record], key: str) -> bool:
    return bool(series(records, key)[0])


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)  # a bare Figure renders with Agg: no display, no global pyplot state
    return out
