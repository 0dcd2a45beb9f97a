"""Pre-trained runs probed in context on scenes of your own: a COCO instances pair (kind coco_boxes).

  python benchmarks/coco_in_context.py --train DIR/train --test DIR/test \
      --run simclr/crowded=runs/bench/simclr-<key>_s0 --run simclr/crowded=runs/bench/simclr-<key>_s1 \
      --run ab/asym=runs/bench/ab_simclr-<key>_s0 ... [--scene-side 128] [--json out.json]

Each --train / --test folder holds the images and instances.json (benchmarks/texture_scenes.py
writes such a pair without annoboot). Every run (several per variant: its seeds) is probed with
the in-context families of the crowded-scenes table, its own eval settings and the same probe
sizes: (b') the object in a given box read from the whole scene's tokens (kNN, linear, MAP;
15,000 train objects) and (c') the classes a scene holds at its own resolution (mAP). Floors
through the same code: the first run's recipe untrained (its seed) and raw pixels. Prints mean
± half the range per variant and each ab/* minus each simclr/* variant. Files of several calls
on the same pair make one table with benchmarks/merge_tables.py (FILE=NAME tells apart runs of one
variant at two budgets).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import _harness as harness
import torch
from _protocol import print_table, probe_figures

from annoboot.commands import check_scene_pair, load_run
from annoboot.data.coco_boxes import CocoBoxSource
from annoboot.eval.baselines import PixelEncoder
from annoboot.methods import build_method

FAMILIES = ("in_context", "scenes_in_context")


def coco_pair(train: str, test: str, side: int):
    pair = [CocoBoxSource(folder, str(Path(folder) / "instances.json"), side) for folder in (train, test)]
    check_scene_pair(*pair, list(FAMILIES))
    return pair


def figures_of(encoder, cfg, train, test, device, max_train_items: int) -> Dict:
    """The crowded-scenes table's in-context figures (_protocol.probe_figures) on the COCO pair."""
    data = SimpleNamespace(families=FAMILIES, scene_train=train, scene_test=test, item_train=None, item_test=None,
                           box_train=max_train_items)
    return probe_figures(encoder, cfg, data, device)


def run_facts(run: str) -> Dict:
    """Steps, views seen and training seconds from the run's metrics log (its last record)."""
    last = json.loads(Path(run, "metrics.jsonl").read_text().strip().splitlines()[-1])
    record = Path(run, "protocol_run.json")
    seconds = (json.loads(record.read_text())["train_seconds"] if record.is_file()
               else last.get("time/train_seconds", 0.0))
    return {"steps": int(last["step"]), "views_seen": int(last.get("progress/views_seen", 0)), "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="folder of train scenes and their instances.json")
    parser.add_argument("--test", required=True, help="folder of test scenes and their instances.json")
    parser.add_argument("--run", action="append", required=True, metavar="VARIANT=RUN_DIR",
                        help="a finished run and the variant it is a seed of (repeat)")
    parser.add_argument("--scene-side", type=int, default=128)
    parser.add_argument("--train-items", type=int, default=15000, help="train objects of probe (b')")
    parser.add_argument("--no-floors", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    runs = []
    for spec in args.run:
        variant, sep, run = spec.partition("=")
        if not sep or not Path(run).is_dir():
            raise SystemExit(f"--run {spec!r}: expected VARIANT=RUN_DIR with an existing run folder")
        runs.append((variant, run))
    train, test = coco_pair(args.train, args.test, args.scene_side)
    print(harness.headline("in context on COCO scenes", train=train.describe(), test=test.describe()), flush=True)
    rows: List[Dict] = []
    for variant, run in runs:
        start = time.perf_counter()
        cfg, method, device = load_run(run, "online", ["train.device=cpu"])
        figures = figures_of(method.encoder, cfg, train, test, device, args.train_items)
        rows.append({**figures, "variant": variant, "seed": cfg.train.seed, "run_dir": run, **run_facts(run),
                     "probe_seconds": time.perf_counter() - start})
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in FAMILIES}), flush=True)
    if not args.no_floors:
        cfg, _, device = load_run(runs[0][1], "online", ["train.device=cpu"])
        torch.manual_seed(cfg.train.seed)
        untrained = build_method(cfg).encoder.to(device)
        rows.append(harness.floor_row("random init", figures_of(untrained, cfg, train, test, device, args.train_items),
                                      cfg.train.seed))
        patch = int(cfg.model.backbone_kwargs.get("patch_size", 8))
        pixels = PixelEncoder(cfg.views.mean, cfg.views.std, patch).to(device)
        pixel_figures = figures_of(pixels, cfg, train, test, device, args.train_items)
        rows.append(harness.floor_row("raw pixels", pixel_figures, None))
    names = list(dict.fromkeys(variant for variant, _ in runs))
    pairs = [(base, other) for base in names if base.startswith("simclr/")
             for other in names if other.startswith("ab/")]
    title = f"in context on {args.train} / {args.test} (scenes at {args.scene_side} px)"
    print_table(title, rows, pairs, families=FAMILIES)
    harness.write_json(args.json, title, rows, families=list(FAMILIES), train=train.describe(), test=test.describe(),
                       skipped_train=train.skipped, skipped_test=test.skipped)


if __name__ == "__main__":
    main()
