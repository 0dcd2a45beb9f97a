"""Protocol 2 (issue 6): SimCLR vs ABSimCLR (and DINO vs ABDINO) pre-trained on unlabeled scenes.

Scenes: 96 px canvases of 2-5 Fashion-MNIST train items at random positions and sizes (20-56
px) over faint clutter (``kind: fmnist_scenes``, data/scene_generator.py); labels, boxes and captions are
not used in pre-training. Every method starts from its configs/fmnist_<method>.yaml recipe with
the same encoder (ViT-Tiny, 8-px patches at 64 px), views and budget (3000 steps of base batch
512; AB methods split it as published: 256 annotation + 64 bootstrap images). The frozen
encoder is probed with kNN / linear / MAP on (a) Fashion-MNIST test items, (b) the item inside a
given box of a test scene, (c) which classes a test scene holds (macro mAP); see
benchmarks/_protocol.py. The table prints the mean ± half the range over seeds and AB - base.

  python benchmarks/scenes.py --seeds 0 1            # GPU: 4 runs; expected ~25 min on one H100
  python benchmarks/scenes.py --seeds 0 1 --dino     # also DINO and ABDINO (8 runs, ~55 min)
  python benchmarks/scenes.py --quick --seeds 0      # CPU smoke run: 86 min on 2 busy cores (results.md)

Expected H100 runtime (an estimate, not yet measured: no GPU was lent when this was written):
about 4-6 min per run of 3000 steps (64 tokens per view, ~1000 views per step) plus about 1 min
of probes (60k items, 60k box crops, 20k scenes). Results go to docs/experiments/ by hand.
"""

from __future__ import annotations

import argparse
import sys

from _protocol import Variant, add_arguments, run_protocol, scene_source, scenes_of


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "runs/bench")
    parser.add_argument("--dino", action="store_true", help="also run DINO vs ABDINO")
    args = parser.parse_args()
    scenes = scenes_of(args)
    data = scene_source("data.annotation", scenes)
    methods = ["simclr", "ab_simclr"] + (["dino", "ab_dino"] if args.dino else [])
    variants = [Variant(method, f"fmnist_{method}", data) for method in methods]
    pairs = [("simclr", "ab_simclr"), ("dino", "ab_dino")]
    title = "Scenes (protocol 2): pre-trained on unlabeled Fashion-MNIST scenes"
    return run_protocol(args, title, variants, scenes, pairs)


if __name__ == "__main__":
    sys.exit(main())
