"""SimCLR vs ABSimCLR on Fashion-MNIST: same recipe, equal views seen, probed the same way.

Pre-trains every variant for every seed from its recipe, probes the frozen encoder on the
Fashion-MNIST test set (weighted kNN k=20 T=0.07, linear, MAP; the recipe's eval split), and
prints one table: steps, views seen, pre-training minutes, then mean ± half the range over
seeds. The same run adds the floors, probed with the same code and split: a randomly
initialised encoder of the recipe's shape (per seed) and raw pixels (kNN and linear on the
784 pixel values). Figures go to docs/results.md by hand, with the printed header.

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
from datetime import date
from pathlib import Path
from typing import Dict, List

import torch
from _protocol import pretrained, run_config, spread

from annoboot.config import Config, load_config
from annoboot.data import build_source
from annoboot.eval import evaluate
from annoboot.eval.knn import knn_accuracy
from annoboot.eval.linear import linear_probe
from annoboot.methods import build_method
from annoboot.runs import evaluate_method
from annoboot.train.runtime import describe, resolve_device
from annoboot.views import Normalize

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"cpu": "configs/cpu/fmnist_{method}.yaml", "gpu": "configs/fmnist_{method}.yaml", "quick": "configs/fmnist_{method}.yaml"}
QUICK = [  # a smoke run of the code path: ViT-Tiny depth 4 at 8-px patches, 300 steps of 128
    "model.backbone_kwargs={patch_size: 8, depth: 4}", "model.decoder_depth=2", "model.proj_hidden_dim=512",
    "train.batch_size=128", "train.steps=300", "train.warmup_steps=30", "train.weight_decay=0.05",
    "train.weight_decay_end=0.05", "eval.train.limit=20000", "eval.linear_epochs=20", "eval.map_epochs=5",
]
PROBES = ("knn", "linear", "map")
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


def parse_variant(text: str) -> Dict:
    parts = text.split(":")
    if len(parts) == 1:
        return {"label": text, "method": text, "overrides": []}
    return {"label": parts[0], "method": parts[1], "overrides": parts[2:]}


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
    encoder = build_method(cfg).encoder.to(device)
    normalize = Normalize(cfg.views.mean, cfg.views.std).to(device)
    results = evaluate(encoder, build_source(cfg.eval.train), build_source(cfg.eval.test), cfg.eval, cfg.views.img_size,
                       normalize, device)
    return {probe: results.get(probe) for probe in PROBES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=["simclr", "ab_simclr"], help="method or label:method[:key=value...]")
    parser.add_argument("--steps", type=int, help="override train.steps for every variant")
    parser.add_argument("--no-floors", action="store_true", help="skip the random-init and raw-pixel rows")
    parser.add_argument("--out-dir", default="runs/bench", help="runs are reused from here when their training matches")
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()

    extra = (QUICK if args.recipe == "quick" else []) + list(args.overrides)
    if args.steps:
        extra.append(f"train.steps={args.steps}")
    runs: List[Dict] = []
    cfg = None
    for variant in map(parse_variant, args.variants):
        for seed in args.seeds:
            recipe = ROOT / RECIPES[args.recipe].format(method=variant["method"])
            cfg = run_config(recipe, extra + variant["overrides"], seed, args.out_dir)
            method, device, train_seconds = pretrained(cfg)
            ev = evaluate_method(method, cfg, device)
            runs.append({"variant": variant["label"], "method": cfg.method.name, "seed": seed, "steps": cfg.train.steps,
                         "views_seen": method.views_per_step() * cfg.train.steps, "train_seconds": train_seconds,
                         "probe_seconds": ev["seconds"], "run_dir": cfg.train.out_dir, **{p: ev.get(p) for p in PROBES},
                         "monitors": final_monitors(cfg.train.out_dir)})
            print(json.dumps(runs[-1]), flush=True)
    assert cfg is not None
    floors: Dict[str, Dict] = {}
    if not args.no_floors:
        simclr_recipe = ROOT / RECIPES[args.recipe].format(method="simclr")
        untrained = [random_init(load_config(simclr_recipe, extra + [f"train.seed={s}", f"eval.seed={s}"])) for s in args.seeds]
        floors["random init"] = {p: spread([r[p] for r in untrained]) if untrained[0][p] is not None else None for p in PROBES}
        pixels = raw_pixel_floors(cfg)
        floors["raw pixels"] = {"knn": (pixels["knn"], 0.0), "linear": (pixels["linear"], 0.0), "map": None}

    device = describe(resolve_device(cfg.train.device), cfg.train.precision, cfg.train.compile)
    print(f"\nFashion-MNIST probes  date={date.today()}  device={device}  recipe={args.recipe}  seeds={args.seeds}  "
          f"overrides={extra}\nprobes: {cfg.eval.train.kind} {cfg.eval.train.split} (limit {cfg.eval.train.limit}) / "
          f"{cfg.eval.test.kind} {cfg.eval.test.split}; mean ± half the range over seeds")
    print(f"{'variant':<22}{'steps':>7}{'views seen':>12}{'train min':>11}" + "".join(f"{p:>15}" for p in ("kNN", "linear", "MAP")))
    by_variant: Dict[str, List[Dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    for label, rs in by_variant.items():
        cells = []
        for probe in PROBES:
            values = [r[probe] for r in rs if r[probe] is not None]
            mean, half = spread(values) if values else (float("nan"), 0.0)
            cells.append(f"{mean:7.2f} ±{half:4.2f}")
        minutes = statistics.mean(r["train_seconds"] for r in rs) / 60
        print(f"{label:<22}{rs[0]['steps']:>7}{rs[0]['views_seen'] / 1e6:>11.2f}M{minutes:>11.1f}" + "".join(f"{c:>15}" for c in cells))
    for label, rs in by_variant.items():
        if rs[0]["monitors"]:
            print(f"  {label} at the last log step: " + ", ".join(
                f"{k} {statistics.mean(r['monitors'][k] for r in rs):.3f}" for k in MONITORS if k in rs[0]["monitors"]))
    for label, cells in floors.items():
        text = "".join(f"{'-':>15}" if c is None else f"{c[0]:7.2f} ±{c[1]:4.2f}".rjust(15) for c in (cells[p] for p in PROBES))
        print(f"{label:<22}{'-':>7}{'-':>12}{'-':>11}" + text)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "date": str(date.today()), "recipe": args.recipe,
                                               "overrides": extra, "runs": runs, "floors": floors}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
