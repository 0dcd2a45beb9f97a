"""The harness every accuracy benchmark shares: variants x seeds, each pre-trained once and
probed, one table of mean ± half the range over seeds (steps, views seen and minutes on every
row; the floors and the AB - base differences below), ``--json`` with the hardware string and,
for every run, its last logged metrics row (``last_logged``: losses, reward entropy, moves' agreement).

A variant is a recipe plus overrides. Run directories are named by a hash of the training
settings (:func:`training_key`), so a finished run is probed again instead of retrained, and
two benchmarks asking for the same training share it when given the same ``--out-dir``.
``--weights ema`` probes each run's EMA target instead of its online network (the DINO paper
probes its teacher); rerun with it after a run with the default, the runs are only probed again.
The ``--quick`` overrides of every benchmark are built from annoboot.presets, where the tests'
tiny model is defined too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from annoboot.commands import load_run
from annoboot.compare import last_logged_metrics
from annoboot.config import Config, to_dict
from annoboot.data.decode import MAX_IMAGE_PIXELS
from annoboot.errors import AnnobootError
from annoboot.recipe import load_config
from annoboot.runtime import describe, resolve_device
from annoboot.tables import format_table, format_views
from annoboot.train.checkpoint import checkpoint_step, latest_checkpoint
from annoboot.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Variant:
    """One pre-training setting: the recipe ``recipe`` (a name the benchmark resolves to a file)
    with ``overrides`` on top."""

    name: str
    recipe: str
    overrides: List[str] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    """``method`` or ``label:method[:key=value[:key=value...]]`` (overrides for that variant only)."""
    parts = text.split(":")
    return Variant(parts[0], parts[0] if len(parts) == 1 else parts[1], parts[2:])


def only(variants: List[Variant], names: Optional[Sequence[str]]) -> List[Variant]:
    if not names:
        return variants
    chosen = [v for v in variants if v.name in names]
    if not chosen:
        raise SystemExit(f"--only {list(names)}: no such variant (have {', '.join(v.name for v in variants)})")
    return chosen


def add_arguments(parser: argparse.ArgumentParser, out_dir: str, seeds: Sequence[int] = (0,)) -> None:
    """The arguments every benchmark takes (a benchmark adds its own budget or recipe choice)."""
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument("--steps", type=int, help="override train.steps for every variant")
    parser.add_argument("--no-floors", action="store_true", help="leave out the random-init and raw-pixel rows")
    parser.add_argument("--out-dir", default=out_dir, help="runs are reused from here when their training matches")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--weights", choices=("online", "ema"), default="online",
                        help="the network probed: the online encoder, or the EMA target (the teacher the DINO "
                             "paper probes); a finished run is probed again, not retrained")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")


def user_overrides(args: argparse.Namespace) -> List[str]:
    """The command line's overrides: applied after the benchmark's and the variant's own."""
    return ([f"train.steps={args.steps}"] if args.steps else []) + list(args.overrides)


# Options added after runs were saved under their keys: left out of the hash while they hold
# these values (the behaviour those runs had), so the saved runs stay valid.
KEY_NEUTRAL = {("method", "target_network"): "ema", ("method", "annotation_queue"): 0,
               ("views", "bootstrap_source_views"): 0, ("views", "bootstrap_source_scale"): [0.5, 1.0]}
# Source options added since, at their defaults (in data.annotation / data.bootstrap).
SOURCE_KEY_NEUTRAL = {"max_pixels": MAX_IMAGE_PIXELS}


def training_key(cfg: Config) -> str:
    """A short hash of everything that shapes training (not eval, logging or where it is written):
    two benchmarks asking for the same training get the same run directory, and train it once."""
    settings = to_dict(cfg)
    settings.pop("eval")
    for key in ("out_dir", "progress", "log_every", "ckpt_every", "keep_checkpoints"):
        settings["train"].pop(key)
    for (section, key), value in KEY_NEUTRAL.items():
        if settings[section].get(key) == value:
            settings[section].pop(key)
    for source in (settings["data"]["annotation"], settings["data"]["bootstrap"] or {}):
        for key, value in SOURCE_KEY_NEUTRAL.items():
            if source.get(key) == value:
                source.pop(key)
        source.pop("read_timeout", None)  # when a read gives up, not what training does
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_config(recipe: Path, overrides: Sequence[str], seed: int, out_dir: str) -> Config:
    """``recipe`` with ``overrides`` and ``seed``, written to <out_dir>/<method>-<training key>_s<seed>."""
    settings = list(overrides) + [f"train.seed={seed}", f"eval.seed={seed}", "train.progress=false", "eval.at_end=false"]
    cfg = load_config(recipe, settings)
    cfg.train.out_dir = f"{out_dir}/{cfg.method.name}-{training_key(cfg)}_s{seed}"
    return cfg


def pretrained(cfg: Config, weights: str = "online"):
    """(method, device, pre-training seconds): trained now, or loaded from a finished run of the
    same training under train.out_dir (with its seconds as recorded when it was trained).
    ``weights``: "online", or "ema" for the run's EMA target network (refused where it keeps none)."""
    run_dir = Path(cfg.train.out_dir)
    record = run_dir / "protocol_run.json"
    found = latest_checkpoint(run_dir)
    if found is not None and record.is_file() and checkpoint_step(found) == cfg.train.steps:
        try:
            _, method, device = load_run(found, weights)  # the weights asked for, verified
        except AnnobootError as exc:  # e.g. --weights ema on a run without a target: one line, no traceback
            raise SystemExit(str(exc)) from None
        print(f"  reusing the finished run in {run_dir} ({weights} weights)", flush=True)
        return method, device, json.loads(record.read_text())["train_seconds"]
    start = time.perf_counter()
    trainer = Trainer(cfg, overwrite=True)  # an unfinished run of a killed benchmark: its time would not count, start afresh
    if weights == "ema" and trainer.target_network is None:  # refuse before training, not after
        raise SystemExit(f"--weights ema: {cfg.method.name} keeps no EMA target network")
    trainer.fit()
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"train_seconds": seconds}))
    return (trainer.method if weights == "online" else trainer.target_network), trainer.device, seconds


def run_row(variant: Variant, seed: int, cfg: Config, evaluate: Callable, weights: str = "online") -> Dict:
    """Pre-train (or reuse) ``cfg`` and return its table row: ``evaluate(method, cfg, device)``'s
    figures (of the ``weights`` network) with the variant, seed, steps, views seen, seconds and the
    run's last logged metrics row."""
    method, device, train_seconds = pretrained(cfg, weights)
    start = time.perf_counter()
    figures = evaluate(method, cfg, device)
    row = {**figures, "variant": variant.name, "recipe": variant.recipe, "method": cfg.method.name, "seed": seed,
           "weights": weights, "steps": cfg.train.steps, "views_seen": method.views_per_step() * cfg.train.steps,
           "train_seconds": train_seconds, "probe_seconds": time.perf_counter() - start, "run_dir": cfg.train.out_dir,
           # The run's last logged losses and ab/* diagnostics (reward entropy, moves' agreement),
           # kept in the table because the run folder's metrics.jsonl is not committed.
           "last_logged": last_logged_metrics(Path(cfg.train.out_dir) / "metrics.jsonl")}
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}, default=float), flush=True)
    return row


def floor_row(name: str, figures: Dict, seed: Optional[int]) -> Dict:
    """A row of the table that was never pre-trained (random init, raw pixels)."""
    return {**figures, "variant": name, "seed": seed, "steps": 0, "views_seen": 0, "train_seconds": 0.0}


def spread(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and half the range."""
    return statistics.mean(values), (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def ab_pairs(rows: List[Dict]) -> List[tuple]:
    """(base, ab_base) for every variant ab_<x> whose base <x> is in the table: AB - base rows."""
    names = list(dict.fromkeys(row["variant"] for row in rows))
    return [(name[3:], name) for name in names if name.startswith("ab_") and name[3:] in names]


def hardware() -> str:
    return describe(resolve_device("auto"), "auto", False)


Column = Tuple[str, Callable[[Dict], Optional[float]]]  # title, figure of a row (None: not measured)


def print_table(title: str, rows: List[Dict], columns: Sequence[Column], pairs: Sequence[tuple] = (),
                width: int = 14, group_titles: Sequence[Tuple[str, int]] = ()) -> None:
    """Mean ± half-range per variant over seeds; then the differences of the ``pairs`` (b, a): a - b.
    ``group_titles``: (title, number of columns) printed above the column titles. Printed by the
    library's table printer (annoboot.tables, also behind ``annoboot compare``)."""
    by_variant: Dict[str, List[Dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    header = ["variant", "steps", "views", "min", *(t for t, _ in columns)]
    body: List[List[str]] = []
    means: Dict[str, List[float]] = {}
    for name, rs in by_variant.items():
        cells, means[name] = [], []
        for _, figure in columns:
            values = [v for v in map(figure, rs) if v is not None]
            mean, half = spread(values) if values else (float("nan"), 0.0)
            means[name].append(mean)
            cells.append("-" if not values else f"{mean:7.2f} ±{half:4.2f}")
        minutes = statistics.mean(r["train_seconds"] for r in rs) / 60
        views = rs[0]["views_seen"]
        if rs[0]["steps"] > 0:
            lead = [str(rs[0]["steps"]), format_views(views), f"{minutes:.1f}"]
        else:  # never trained: a floor row
            lead = ["-", "-", "-"]
        body.append([name, *lead, *cells])
    for base, other in pairs:
        if base in means and other in means:
            body.append([f"{other} - {base}", "", "", "", *(f"{b - a:+.2f}" for a, b in zip(means[base], means[other]))])
    print(f"\n{title}")
    print(format_table(header, body, widths=[22, 6, 7, 6, *[width] * len(columns)], group_titles=group_titles))


def write_json(path: Optional[str], title: str, rows: List[Dict], **header) -> None:
    """Every figure, with the hardware, date and the header's settings (seeds, overrides, ...)."""
    if path:
        Path(path).write_text(json.dumps({"title": title, "device": hardware(), "date": str(date.today()), **header,
                                          "runs": rows}, indent=2, default=float))


def read_protocol_json(path: str) -> Dict:
    """A protocol's ``--json`` file (a dict whose runs each name a variant and a seed), or
    SystemExit naming the file and what is wrong with it: a table is often rebuilt from files
    named by hand, and a typo or a cut-off copy should not end in a traceback."""
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file") from None
    except OSError as error:
        raise SystemExit(f"{path}: cannot be read ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path}: not JSON ({error.msg}, line {error.lineno} column {error.colno})") from None
    except UnicodeDecodeError as error:
        raise SystemExit(f"{path}: not JSON (not UTF-8 text at byte {error.start})") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise SystemExit(f"{path}: not a protocol's --json (no list of runs)")
    for index, run in enumerate(runs):
        if not isinstance(run, dict) or "variant" not in run or "seed" not in run:
            raise SystemExit(f"{path}: run {index} is not a run of a protocol (a dict with a variant and a seed)")
    return data


def headline(title: str, **settings) -> str:
    """The table's first line: what ran, when, on what."""
    return f"{title}  date={date.today()}  device={hardware()}  " + "  ".join(f"{k}={v}" for k, v in settings.items())
