"""SimCLR vs ABSimCLR on Fashion-MNIST: same recipe, equal views seen, probed the same way.

Pre-trains every variant for every seed from its recipe, probes the frozen encoder on the
Fashion-MNIST test set (weighted kNN k=20 T=0.07, linear, MAP; the recipe's eval split), and
prints one table: steps, views seen, pre-training minutes, then mean ± half the range over
seeds. The same run adds the floors, probed with the same code and split: a randomly
initialised encoder of the recipe's shape (per seed) and raw pixels (kNN and linear on the
784 pixel values). Figures go to docs/experiments/ by hand, with the printed header (a summary line in docs/results.md).

  python benchmarks/fmnist_probes.py --recipe cpu --seeds 0 1     # configs/cpu, 2-core CPU (~1.5 h)
  python benchmarks/fmnist_probes.py --recipe gpu --seeds 0 1     # configs/fmnist_*.yaml on a GPU
  python benchmarks/fmnist_probes.py --recipe cpu --variants simclr ab_simclr ab_simclr_equal_views:ab_simclr:train.steps=5000
  python benchmarks/fmnist_probes.py --recipe quick               # 300-step smoke run of the code

A variant is ``method`` or ``label:method[:key=value[:key=value...]]`` (overrides for that
variant only); the other arguments' overrides apply to every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List

import torch
from _harness import (
    ROOT,
    ab_pairs,
    add_arguments,
    floor_row,
    headline,
    parse_variant,
    print_table,
    run_config,
    run_row,
    user_overrides,
    write_json,
)

from annoboot.commands import evaluate_encoder, evaluate_method
from annoboot.config import Config
from annoboot.data import build_source
from annoboot.eval.knn import knn_accuracy
from annoboot.eval.linear import linear_probe
from annoboot.methods import build_method
from annoboot.presets import QUICK_EVAL, QUICK_MODEL, QUICK_TRAIN, QUICK_WEIGHT_DECAY
from annoboot.recipe import load_config
from annoboot.runtime import resolve_device

RECIPES = {"cpu": "configs/cpu/fmnist_{method}.yaml", "gpu": "configs/fmnist_{method}.yaml", "quick": "configs/fmnist_{method}.yaml"}
# A smoke run of the code path: ViT-Tiny depth 4 at 8-px patches, 300 steps of 128, probes on 20k.
QUICK = [*QUICK_MODEL, "model.proj_hidden_dim=512", *QUICK_TRAIN, *QUICK_WEIGHT_DECAY, "eval.train.limit=20000", *QUICK_EVAL]
PROBES = ("knn", "linear", "map")
COLUMNS = [(title, lambda row, p=probe: row.get(p)) for title, probe in zip(("kNN", "linear", "MAP"), PROBES)]
# Logged health figures reported at the end of each run (DINO's collapse monitors and the AB reward's width).
MONITORS = ("dino/teacher_entropy", "dino/teacher_kl_uniform", "dino/student_feature_std", "ab/target_entropy")


def final_monitors(run_dir: str) -> Dict[str, float]:
    """The last logged value of each of MONITORS in the run's metrics.jsonl (those it logs)."""
    found: Dict[str, float] = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        found.update({k: record[k] for k in MONITORS if k in record})
    return found


def raw_pixel_floors(cfg: Config) -> Dict[str, float]:
    """kNN and linear on raw pixels of the same evaluation split, with the probes' own code."""
    train, test = build_source(cfg.eval.train), build_source(cfg.eval.test)
    xtr, xte = train.in_memory().flatten(1).float() / 255, test.in_memory().flatten(1).float() / 255
    knn = knn_accuracy(xtr, train.labels, xte, test.labels, num_classes=10, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
    linear = linear_probe(xtr, train.labels, xte, test.labels, 10, lrs=tuple(cfg.eval.linear_lrs), epochs=cfg.eval.linear_epochs,
                          val_fraction=cfg.eval.val_fraction, seed=cfg.eval.seed)
    return {"knn": knn, "linear": linear["test_acc"]}


def random_init(cfg: Config) -> Dict[str, float]:
    """The probes on the recipe's encoder as initialised (seeded by train.seed), never trained."""
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    results = evaluate_encoder(build_method(cfg).encoder.to(device), cfg, device)
    return {probe: results.get(probe) for probe in PROBES}


def probes_and_monitors(method, cfg: Config, device) -> Dict:
    ev = evaluate_method(method, cfg, device)
    return {**{p: ev.get(p) for p in PROBES}, "monitors": final_monitors(cfg.train.out_dir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "runs/bench")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    parser.add_argument("--variants", nargs="+", default=["simclr", "ab_simclr"], help="method or label:method[:key=value...]")
    args = parser.parse_args()

    extra = (QUICK if args.recipe == "quick" else []) + user_overrides(args)
    runs: List[Dict] = []
    for variant in map(parse_variant, args.variants):
        for seed in args.seeds:
            cfg = run_config(ROOT / RECIPES[args.recipe].format(method=variant.recipe), extra + variant.overrides, seed, args.out_dir)
            runs.append(run_row(variant, seed, cfg, probes_and_monitors, args.weights))
    if not args.no_floors:
        simclr_recipe = ROOT / RECIPES[args.recipe].format(method="simclr")
        for s in args.seeds:
            runs.append(floor_row("random init", random_init(load_config(simclr_recipe, extra + [f"train.seed={s}", f"eval.seed={s}"])), s))
        runs.append(floor_row("raw pixels", raw_pixel_floors(cfg), None))

    title = "Fashion-MNIST probes"
    print_table(headline(title, recipe=args.recipe, seeds=args.seeds, weights=args.weights, overrides=extra)
                + f"\nprobes: {cfg.eval.train.kind} {cfg.eval.train.split} (limit {cfg.eval.train.limit}) / "
                f"{cfg.eval.test.kind} {cfg.eval.test.split}; mean ± half the range over seeds", runs, COLUMNS, ab_pairs(runs))
    by_variant: Dict[str, List[Dict]] = {}
    for run in runs:
        if run.get("monitors"):
            by_variant.setdefault(run["variant"], []).append(run)
    for label, rs in by_variant.items():
        print(f"  {label} at the last log step: " + ", ".join(
            f"{k} {statistics.mean(r['monitors'][k] for r in rs):.3f}" for k in MONITORS if k in rs[0]["monitors"]))
    write_json(args.json, title, runs, recipe=args.recipe, seeds=args.seeds, overrides=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
