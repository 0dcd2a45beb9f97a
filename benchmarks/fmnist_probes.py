"""SimCLR vs ABSimCLR on Fashion-MNIST: same backbone, views, optimiser and step budget.

Pre-trains each method from configs/fmnist_{simclr,ab_simclr}.yaml for every seed, probes the
frozen encoder on the 10k test set (weighted kNN k=20 T=0.07, linear, MAP) and prints one
table with the mean and spread over seeds, plus the raw-pixel kNN floor measured in the same
run. Figures go to docs/results.md by hand, with the printed header.

  python benchmarks/fmnist_probes.py --seeds 0 1            # GPU recipe (<= 10 GPU-min per run)
  python benchmarks/fmnist_probes.py --quick                # small CPU version of the same code
  python benchmarks/fmnist_probes.py --steps 2000 train.batch_size=256   # any config override
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from annoboot.config import load_config
from annoboot.data import build_source
from annoboot.eval.knn import knn_accuracy
from annoboot.runs import pretrain

ROOT = Path(__file__).resolve().parent.parent
QUICK = [
    "model.backbone_kwargs={patch_size: 8, depth: 4}",
    "model.decoder_depth=2",
    "model.proj_hidden_dim=512",
    "train.batch_size=128",
    "train.warmup_steps=30",
    "train.weight_decay=0.05",
    "train.weight_decay_end=0.05",
    "eval.train.limit=20000",
    "eval.linear_epochs=20",
    "eval.map_epochs=5",
]


def raw_pixel_knn(cfg) -> float:
    """The floor: weighted kNN on raw pixels of the same evaluation split."""
    train, test = build_source(cfg.eval.train), build_source(cfg.eval.test)

    def flat(source):
        return source.in_memory().flatten(1).float(), source.labels

    (xtr, ytr), (xte, yte) = flat(train), flat(test)
    return knn_accuracy(xtr, ytr, xte, yte, num_classes=10, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)


def spread(values):
    return (statistics.mean(values), (max(values) - min(values)) / 2 if len(values) > 1 else 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, help="override train.steps for both methods")
    parser.add_argument("--methods", nargs="+", default=["simclr", "ab_simclr"])
    parser.add_argument("--quick", action="store_true", help="small model and budget for a CPU run")
    parser.add_argument("--out-dir", default="runs/bench_fmnist")
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()

    extra = (QUICK + ["train.steps=300"] if args.quick else []) + list(args.overrides)
    if args.steps:
        extra.append(f"train.steps={args.steps}")
    rows, runs = {}, []
    for method in args.methods:
        for seed in args.seeds:
            cfg = load_config(
                ROOT / "configs" / f"fmnist_{method}.yaml",
                extra + [f"train.seed={seed}", f"eval.seed={seed}", f"train.out_dir={args.out_dir}/{method}_s{seed}", "train.progress=false"],
            )
            start = time.perf_counter()
            summary = pretrain(cfg)
            seconds = time.perf_counter() - start
            ev = summary["eval"]
            runs.append({"method": method, "seed": seed, "seconds": seconds, "steps": cfg.train.steps,
                         "knn": ev.get("knn"), "linear": ev.get("linear"), "map": ev.get("map")})
            rows.setdefault(method, []).append(runs[-1])
    floor = raw_pixel_knn(cfg)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\nFashion-MNIST probes  date={date.today()}  device={device}  seeds={args.seeds}  overrides={extra}")
    print(f"{'method':<12}{'steps':>7}{'min/run':>9}{'kNN':>14}{'linear':>14}{'MAP':>14}")
    for method, rs in rows.items():
        cells = []
        for key in ("knn", "linear", "map"):
            vals = [r[key] for r in rs if r[key] is not None]
            m, s = spread(vals) if vals else (float("nan"), 0.0)
            cells.append(f"{m:6.2f} ±{s:4.2f}")
        minutes = statistics.mean(r["seconds"] for r in rs) / 60
        print(f"{method:<12}{rs[0]['steps']:>7}{minutes:>9.1f}" + "".join(f"{c:>14}" for c in cells))
    print(f"{'raw pixels':<12}{'':>7}{'':>9}{floor:>8.2f}       (weighted kNN floor, same split)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "date": str(date.today()), "overrides": extra,
                                               "runs": runs, "raw_pixel_knn": floor}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
