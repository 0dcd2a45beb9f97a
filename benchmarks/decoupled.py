"""Protocol 4 (issue 6): decoupled annotation bootstrapping against a base method on the mixture.

- ab_simclr/decoupled: the SimCLR loss on single Fashion-MNIST items (the curated set, 60k
  train images: data.annotation), bootstrapping on scenes (data.bootstrap = fmnist_scenes);
- simclr/mixture: SimCLR on the mixture of both in one source: an fmnist_scenes source whose
  canvases are single whole items with probability I / (I + S) (I = 60,000 items, S = the
  scenes' count) and scenes otherwise, i.e. the union of the two sets in expectation. A single
  item fills its canvas (upscaled, rendered to the same view size as a 28-px item would be).
  ``--mix-fraction`` sets another share of single items.
- ``--single-sources`` adds SimCLR on items only, SimCLR on scenes only and coupled ABSimCLR on
  scenes (the "either single source" rows); ``--base dino`` runs DINO / ABDINO instead.

Same encoder, views and budget for all (see benchmarks/scenes.py and _protocol.py); the probes
are (a) Fashion-MNIST test items, (b) the item in a given box of a test scene, (c) the classes
of a test scene (macro mAP), each by kNN / linear / MAP, mean ± half the range over seeds.

  python benchmarks/decoupled.py --seeds 0 1                    # GPU: 4 runs, expected ~25 min on one H100
  python benchmarks/decoupled.py --seeds 0 1 --single-sources   # 10 runs, ~60 min
  python benchmarks/decoupled.py --quick --seeds 0              # CPU smoke run, ~1.5 h on 2 busy cores

Expected H100 runtime: an estimate (about 5-6 min per run, probes included), not yet measured.
"""

from __future__ import annotations

import argparse
import sys

from _protocol import Variant, add_arguments, run_protocol, scene_source, scenes_of

FASHION_MNIST_TRAIN = 60000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "runs/bench")
    parser.add_argument("--base", choices=["simclr", "dino"], default="simclr")
    parser.add_argument("--single-sources", action="store_true", help="also train on items only and on scenes only")
    parser.add_argument("--mix-fraction", type=float, help="share of single items in the mixture (default: the union)")
    args = parser.parse_args()
    scenes = scenes_of(args)
    base, ab = args.base, f"ab_{args.base}"
    num_scenes = scenes["num_scenes"]
    fraction = args.mix_fraction
    if fraction is None:
        fraction = FASHION_MNIST_TRAIN / (FASHION_MNIST_TRAIN + num_scenes)
    # As many canvases as keep the scene count: I + S for the union's share.
    canvases = round(num_scenes / (1 - fraction)) if fraction < 1 else FASHION_MNIST_TRAIN
    mixture = scene_source("data.annotation", scenes, num_scenes=canvases, single_fraction=fraction)
    items_only = ["data.annotation={kind: fashion_mnist, split: train}"]
    variants = [
        Variant(f"{base}/mixture", f"fmnist_{base}", mixture),
        Variant(f"{ab}/decoupled", f"fmnist_{ab}", items_only + scene_source("data.bootstrap", scenes)),
    ]
    if args.single_sources:
        variants += [
            Variant(f"{base}/items", f"fmnist_{base}", items_only),
            Variant(f"{base}/scenes", f"fmnist_{base}", scene_source("data.annotation", scenes)),
            Variant(f"{ab}/scenes", f"fmnist_{ab}", scene_source("data.annotation", scenes)),
        ]
    others = (f"{base}/mixture", f"{base}/items", f"{base}/scenes", f"{ab}/scenes")
    pairs = [(other, f"{ab}/decoupled") for other in others]
    title = f"Decoupled (protocol 4): {ab} with items as annotations and scenes to bootstrap vs {base} on the mixture"
    return run_protocol(args, title, variants, scenes, pairs)


if __name__ == "__main__":
    sys.exit(main())
