"""CLIP vs ABCLIP on a captioned set that installs offline: same encoder, text tower, step
budget and base batch.

Pre-trains each method from configs/openclipart_{clip,ab_clip}.yaml for every seed (on Tux
Paint stamps with --data tuxpaint) and prints one table with the mean and spread over seeds:
zero-shot top-1 over the set's categories, image->text and text->image recall@1/5 on the
held-out split, and kNN / linear / MAP of the frozen image encoder (categories as labels).
Figures go to docs/experiments/ by hand, with the printed header (a summary line in docs/results.md).

  python benchmarks/captioned_probes.py --seeds 0 1               # GPU recipe
  python benchmarks/captioned_probes.py --quick --data tuxpaint   # small CPU version of the same code
"""

from __future__ import annotations

import argparse
import sys

import torch
from _harness import (
    ROOT,
    Variant,
    ab_pairs,
    add_arguments,
    floor_row,
    headline,
    print_table,
    run_config,
    run_row,
    user_overrides,
    write_json,
)

from annoboot.commands import evaluate_encoder, evaluate_method
from annoboot.eval.baselines import PixelEncoder
from annoboot.methods import build_method
from annoboot.presets import QUICK_CAPTIONED, QUICK_EVAL
from annoboot.recipe import load_config
from annoboot.runtime import resolve_device

QUICK = [*QUICK_CAPTIONED, "data.annotation.num_workers=2",
         "eval.train.num_workers=2", "eval.test.num_workers=2", *QUICK_EVAL]
COLUMNS = [(title, lambda row, k=key: row.get(k)) for title, key in [
    ("zero-shot", "zero_shot"), ("i->t R@1", "image_to_text_r1"), ("i->t R@5", "image_to_text_r5"), ("t->i R@1", "text_to_image_r1"),
    ("t->i R@5", "text_to_image_r5"), ("kNN", "knn"), ("linear", "linear"), ("MAP", "map")]]


def data_overrides(data: str):
    if data == "openclipart":
        return []
    return [f"data.annotation.kind={data}", f"eval.train.kind={data}", f"eval.test.kind={data}", f"eval.retrieval.kind={data}",
            "eval.zero_shot_templates=['a photo of {}.', 'a picture of {}.', 'a {}.']"]


def figures(ev: dict) -> dict:
    """The evaluation's figures, retrieval's flattened in."""
    return {**{k: v for k, v in ev.items() if k != "retrieval"}, **ev.get("retrieval", {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "runs/bench_captioned")
    parser.add_argument("--methods", nargs="+", default=["clip", "ab_clip"])
    parser.add_argument("--data", choices=["openclipart", "tuxpaint"], default="openclipart")
    parser.add_argument("--quick", action="store_true", help="small model and budget for a CPU run")
    args = parser.parse_args()

    extra = (QUICK if args.quick else []) + data_overrides(args.data) + user_overrides(args)
    runs = []
    for method in args.methods:
        for seed in args.seeds:
            cfg = run_config(ROOT / "configs" / f"openclipart_{method}.yaml", extra, seed, args.out_dir)
            runs.append(run_row(Variant(method, f"openclipart_{method}"), seed, cfg, lambda m, c, d: figures(evaluate_method(m, c, d)), args.weights))
    if not args.no_floors:  # probed with the same code and split: the untrained method (per seed) and raw pixels
        for seed in args.seeds:
            cfg = load_config(ROOT / "configs" / f"openclipart_{args.methods[-1]}.yaml", extra + [f"train.seed={seed}", f"eval.seed={seed}"])
            device = resolve_device(cfg.train.device)
            torch.manual_seed(seed)
            runs.append(floor_row("random init", figures(evaluate_method(build_method(cfg).to(device).eval(), cfg, device)), seed))
        patch = 8 if cfg.views.img_size % 8 == 0 else 1
        runs.append(floor_row("raw pixels", figures(evaluate_encoder(PixelEncoder(cfg.views.mean, cfg.views.std, patch), cfg, device)), None))
    chance = runs[0]
    title = f"{args.data}: CLIP vs ABCLIP"
    print_table(headline(title, seeds=args.seeds, weights=args.weights, overrides=extra) + f"\nchance: zero-shot {chance.get('zero_shot_chance', 0):.2f}, "
                f"retrieval R@1 {chance.get('chance_r1', 0):.2f} over {chance.get('num_pairs')} pairs", runs, COLUMNS,
                ab_pairs(runs), width=13)
    write_json(args.json, title, runs, seeds=args.seeds, overrides=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
