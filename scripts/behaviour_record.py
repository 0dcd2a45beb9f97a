"""Record what a structure change must not change, to compare before and after it.

For every recipe under configs/ (and configs/cpu/): its training key (benchmarks/_harness.py,
the hash of every setting that shapes training) and its resolved settings; for every recipe
whose method differs, the losses of its first 3 steps on a small model and batch (same seed,
one thread, the recipe's data source shrunk to 512 Fashion-MNIST images or 64 OpenCLIPart ones).

    python scripts/behaviour_record.py --out /tmp/before.json      # at the old commit
    python scripts/behaviour_record.py --out /tmp/after.json       # at the new one
    python scripts/behaviour_record.py --compare /tmp/before.json /tmp/after.json

Needs Fashion-MNIST (scripts/setup.sh); recipes whose data is missing are recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import training_key  # noqa: E402

from annoboot.config import to_dict  # noqa: E402
from annoboot.errors import AnnobootError  # noqa: E402
from annoboot.recipe import load_config  # noqa: E402

SMALL = [
    "model.backbone_kwargs={patch_size: 8, depth: 1, embed_dim: 48, num_heads: 3, global_pool: avg}",
    "model.proj_hidden_dim=64", "model.proj_dim=32", "train.batch_size=16", "train.steps=3",
    "train.warmup_steps=1", "train.log_every=1", "train.progress=false",
    "train.compile=false", "train.device=cpu", "train.precision=fp32", "eval.at_end=false",
]


def first_losses(recipe: Path, out_dir: str) -> list:
    from annoboot.train.trainer import Trainer

    cfg = load_config(recipe, SMALL + [f"train.out_dir={out_dir}"])
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    losses = []
    for _ in range(3):
        metrics = trainer.train_step()
        losses.append(round(float(metrics["loss/total"]), 6))
    return losses


def record() -> dict:
    torch.set_num_threads(1)
    recipes = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "cpu").glob("*.yaml"))
    out: dict = {"keys": {}, "settings": {}, "losses": {}}
    seen_methods = set()
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in recipes:
            name = str(recipe.relative_to(ROOT))
            cfg = load_config(recipe)
            out["keys"][name] = training_key(cfg)
            out["settings"][name] = to_dict(cfg)
            if cfg.method.name in seen_methods:
                continue
            try:
                out["losses"][name] = first_losses(recipe, str(Path(tmp) / recipe.stem))
                seen_methods.add(cfg.method.name)
            except AnnobootError as exc:
                out["losses"][name] = f"skipped: {exc}"
    return out


def compare(before: dict, after: dict) -> int:
    differences = 0
    for part in ("keys", "losses", "settings"):
        for name in sorted(set(before[part]) | set(after[part])):
            if before[part].get(name) != after[part].get(name):
                differences += 1
                print(f"{part} of {name} differ:\n  before {before[part].get(name)}\n  after  {after[part].get(name)}"
                      if part != "settings" else f"settings of {name} differ")
    print(f"{len(before['keys'])} recipes, {len(before['losses'])} loss records: "
          + ("identical" if not differences else f"{differences} differences"))
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the record here")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two records")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(path).read_text()) for path in args.compare)
        return compare(before, after)
    if not args.out:
        parser.error("give --out or --compare")
    Path(args.out).write_text(json.dumps(record(), indent=1, sort_keys=True))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
