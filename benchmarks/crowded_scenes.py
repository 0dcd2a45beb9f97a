"""Issue 30: crowded scenes where crop consistency fails, probed in context, and AB on them.

Scenes: the ``crowded`` preset of ``fmnist_scenes`` (data/scene_generator.py): 64-px canvases of
4-6 Fashion-MNIST items of 12-20 px with little overlap, over a per-scene background grating
(orientation, period, phase, level and contrast of its own, drawn apart from the items). Every
variant uses the configs/cpu recipes' encoder and views (ViT-Tiny, 4 blocks, 8-px patches,
views of 32 px). Probes (benchmarks/_protocol.py, eval/in_context.py), the same for every row:

  (a)  Fashion-MNIST test items (60k / 10k), top-1 %;
  (b') the item in a given box of a held-out scene, read from the tokens of the whole scene
       encoded at its own 64 px (the tokens whose centre lies in the box: mean-pooled for kNN
       and linear, as a set for MAP), top-1 %;
  (c') which classes a held-out scene holds, the scene encoded at 64 px, macro mAP %;

each by kNN / linear / MAP, mean ± half the range over seeds, with the random-init and
raw-pixel floors. Probe scenes: 5,000 train / 2,000 test crowded scenes with the background
(15,000 train items for (b')), test items only in test scenes.

Tables (``--table``):
  premise    SimCLR on items, on crowded scenes, and on crowded scenes without the background
             (the control): does crop consistency lose on these scenes what it learns on items?
  ab         SimCLR on crowded scenes against the ABSimCLR levers of issue 30 (lever overrides
             below), and decoupled ABSimCLR (annotations from items, bootstrap crops from the
             scenes) against SimCLR on items and on the mixture of items and scenes.
``--variants label:recipe[:key=value...]`` runs others (data: the crowded scenes unless a
variant overrides data.annotation).

  python benchmarks/crowded_scenes.py --table premise --seeds 0 1 --steps 2000
  python benchmarks/crowded_scenes.py --table ab --seeds 0 1
  python benchmarks/crowded_scenes.py --quick --table premise --seeds 0 --steps 20      # smoke run

Runtime (2-core CPU, encoder-only bound about 237 ms per 512 views): SimCLR 5,000 steps is
about 20 min plus 3-4 min of probes; see docs/results.md for each table's measured minutes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List

from _harness import parse_variant
from _protocol import SCENE_CHOICES, Variant, add_arguments, run_protocol, scene_source

ITEMS = ["data.annotation.kind=fashion_mnist"]  # the scene options stay in the config, unread
BASE_WHOLE = ["method.annotation_fraction=1.0"]  # SimCLR's 256 images x 2 views intact


def premise_variants(scenes: Dict) -> List[Variant]:
    crowded = scene_source("data.annotation", scenes)
    plain = scene_source("data.annotation", {**scenes, "background": "none"})
    return [
        Variant("simclr/items", "fmnist_simclr", crowded + ITEMS),
        Variant("simclr/crowded", "fmnist_simclr", crowded),
        Variant("simclr/crowded_plain", "fmnist_simclr", plain),
    ]


def ab_variants(scenes: Dict) -> List[Variant]:
    crowded = scene_source("data.annotation", scenes)
    mixture = scene_source("data.annotation", {**scenes, "num_scenes": 80000, "single_fraction": 0.75})
    boot = scene_source("data.bootstrap", scenes)
    small_online = BASE_WHOLE + ["method.bootstrap_fraction=0.125", "method.target_network=online"]
    return [
        Variant("simclr/crowded", "fmnist_simclr", crowded),
        Variant("ab_simclr/small_online", "fmnist_ab_simclr", crowded + small_online),
        Variant("ab_simclr/decoupled", "fmnist_ab_simclr", crowded + ITEMS + boot + small_online),
        Variant("simclr/items", "fmnist_simclr", crowded + ITEMS),
        Variant("simclr/mixture", "fmnist_simclr", mixture),
    ]


TABLES = {"premise": premise_variants, "ab": ab_variants}
TITLES = {
    "premise": "Crowded scenes, the premise: SimCLR on items vs on crowded scenes (with and without background)",
    "ab": "Crowded scenes: SimCLR vs the ABSimCLR levers, decoupled vs items and the mixture",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "runs/bench")
    parser.add_argument("--table", choices=sorted(TABLES), default="premise")
    parser.add_argument("--variants", nargs="+", help="label:recipe[:key=value...] on the crowded scenes, instead of a table")
    parser.set_defaults(scenes="crowded")
    args = parser.parse_args()
    if args.scenes == "budget":
        raise SystemExit("--scenes budget: this protocol is for the crowded scenes (crowded, crowded_plain, crowded_plaid)")
    scenes = dict(SCENE_CHOICES[args.scenes])
    if args.budget == "quick":
        scenes["num_scenes"] = 6000
    if args.variants:
        data = scene_source("data.annotation", scenes)
        variants = [Variant(v.name, v.recipe, data + v.overrides) for v in map(parse_variant, args.variants)]
        title = "Crowded scenes: " + ", ".join(v.name for v in variants)
    else:
        variants, title = TABLES[args.table](scenes), TITLES[args.table]
    names = [v.name for v in variants]
    pairs = [(base, other) for base in ("simclr/crowded", "simclr/items", "simclr/mixture") if base in names
             for other in names if other.startswith("ab_")]
    if args.table == "premise" and not args.variants:
        pairs = [("simclr/items", "simclr/crowded"), ("simclr/items", "simclr/crowded_plain"),
                 ("simclr/crowded_plain", "simclr/crowded")]
    return run_protocol(args, title, variants, scenes, pairs)


if __name__ == "__main__":
    sys.exit(main())
