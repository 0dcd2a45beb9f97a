"""CLIP vs ABCLIP on a captioned set that installs offline: same encoder, text tower, step
budget and base batch.

Pre-trains each method from configs/openclipart_{clip,ab_clip}.yaml for every seed (on Tux
Paint stamps with --data tuxpaint) and prints one table with the mean and spread over seeds:
zero-shot top-1 over the set's categories, image->text and text->image recall@1/5 on the
held-out split, and kNN / linear / MAP of the frozen image encoder (categories as labels).
Figures go to docs/results.md by hand, with the printed header.

  python benchmarks/captioned_probes.py --seeds 0 1               # GPU recipe
  python benchmarks/captioned_probes.py --quick --data tuxpaint   # small CPU version of the same code
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from _protocol import spread

from annoboot.config import load_config
from annoboot.eval.baselines import PixelEncoder
from annoboot.methods import build_method
from annoboot.runs import evaluate_encoder, evaluate_method, pretrain
from annoboot.train.runtime import describe, resolve_device

ROOT = Path(__file__).resolve().parent.parent
QUICK = [
    "model.backbone_kwargs={patch_size: 8, depth: 4}",
    "views.img_size=32",
    "model.text_width=128",
    "model.text_depth=2",
    "model.text_heads=2",
    "model.embed_dim=128",
    "model.decoder_depth=2",
    "train.batch_size=128",
    "train.warmup_steps=30",
    "train.steps=300",
    "train.lr=1e-3",
    "data.annotation.num_workers=2",
    "eval.train.num_workers=2",
    "eval.test.num_workers=2",
    "eval.linear_epochs=20",
    "eval.map_epochs=5",
]
COLUMNS = ("zero_shot", "image_to_text_r1", "image_to_text_r5", "text_to_image_r1", "text_to_image_r5", "knn", "linear", "map")


def data_overrides(data: str):
    if data == "openclipart":
        return []
    return [f"data.annotation.kind={data}", f"eval.train.kind={data}", f"eval.test.kind={data}", f"eval.retrieval.kind={data}",
            "eval.zero_shot_templates=['a photo of {}.', 'a picture of {}.', 'a {}.']"]


def row(label: str, seed, seconds: float, steps: int, ev: dict) -> dict:
    """One table row: the figures of COLUMNS an evaluation produced (None where it has none)."""
    figures = {**ev, **ev.get("retrieval", {})}
    return {"method": label, "seed": seed, "seconds": seconds, "steps": steps, **{k: figures.get(k) for k in COLUMNS}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["clip", "ab_clip"])
    parser.add_argument("--data", choices=["openclipart", "tuxpaint"], default="openclipart")
    parser.add_argument("--quick", action="store_true", help="small model and budget for a CPU run")
    parser.add_argument("--out-dir", default="runs/bench_captioned")
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument("--no-floors", action="store_true", help="leave out the random-init and raw-pixel rows")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()

    extra = (QUICK if args.quick else []) + data_overrides(args.data) + list(args.overrides)
    rows, runs = {}, []
    for method in args.methods:
        for seed in args.seeds:
            cfg = load_config(
                ROOT / "configs" / f"openclipart_{method}.yaml",
                extra + [f"train.seed={seed}", f"eval.seed={seed}", f"train.out_dir={args.out_dir}/{args.data}_{method}_s{seed}",
                         "train.progress=false"],
            )
            start = time.perf_counter()
            ev = pretrain(cfg)["eval"]
            run = row(method, seed, time.perf_counter() - start, cfg.train.steps, ev)
            runs.append(run)
            rows.setdefault(method, []).append(run)
            chance = {"zero_shot": ev.get("zero_shot_chance"), "r1": ev.get("retrieval", {}).get("chance_r1"),
                      "pairs": ev.get("retrieval", {}).get("num_pairs")}

    if not args.no_floors:  # probed with the same code and split: the untrained method (per seed) and raw pixels
        for seed in args.seeds:
            cfg = load_config(ROOT / "configs" / f"openclipart_{args.methods[-1]}.yaml", extra + [f"train.seed={seed}", f"eval.seed={seed}"])
            device = resolve_device(cfg.train.device)
            torch.manual_seed(seed)
            rows.setdefault("random init", []).append(row("random init", seed, 0.0, 0, evaluate_method(build_method(cfg).to(device).eval(), cfg, device)))
        patch = 8 if cfg.views.img_size % 8 == 0 else 1
        rows["raw pixels"] = [row("raw pixels", None, 0.0, 0, evaluate_encoder(PixelEncoder(cfg.views.mean, cfg.views.std, patch), cfg, device))]
        runs.extend(rows["random init"] + rows["raw pixels"])
    device = describe(resolve_device("auto"), "auto", False)
    print(f"\n{args.data}: CLIP vs ABCLIP  date={date.today()}  device={device}  seeds={args.seeds}  overrides={extra}")
    print(f"chance: zero-shot {chance['zero_shot']:.2f}, retrieval R@1 {chance['r1']:.2f} over {chance['pairs']} pairs")
    header = ["zero-shot", "i->t R@1", "i->t R@5", "t->i R@1", "t->i R@5", "kNN", "linear", "MAP"]
    print(f"{'method':<9}{'steps':>6}{'min/run':>8}" + "".join(f"{h:>13}" for h in header))
    for method, rs in rows.items():
        cells = []
        for key in COLUMNS:
            vals = [r[key] for r in rs if r.get(key) is not None]
            m, s = spread(vals) if vals else (float("nan"), 0.0)
            cells.append(f"{m:6.2f} ±{s:4.2f}")
        minutes = statistics.mean(r["seconds"] for r in rs) / 60
        print(f"{method:<9}{rs[0]['steps']:>6}{minutes:>8.1f}" + "".join(f"{c:>13}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "date": str(date.today()), "overrides": extra, "runs": runs,
                                               "chance": chance}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
