"""Protocol 5 (issue 6): ablations of ABSimCLR pre-trained on unlabeled scenes.

Variants (all ab_simclr on the scenes of benchmarks/scenes.py, same encoder, views and budget;
simclr is the reference base):

  simclr          the base method, no bootstrapping
  ab_simclr       the published recipe: gamma 0 (reward only), EMA target, action tokens,
                  bootstrap crops of scale 0.05-1
  gamma0.5_mean   gamma 0.5, next-state value averaged over the candidate moves
  gamma0.5_max    gamma 0.5, max over moves renormalised over annotations
  no_ema          the target is the online network: ema_momentum = ema_momentum_end = 0, so
                  after every step target <- online (train/ema.py lerps with weight 1)
  no_actions      method.action_tokens=false: the value decoder sees one constant move and can
                  only predict the average over moves (invariance)
  near            bootstrap crops of scale 0.4-1: targets overlap their source a lot
  far             bootstrap crops of scale 0.05-0.4: small crops, mostly far from each other

Probes: (a) Fashion-MNIST test items, (b) the item in a given box of a test scene, (c) the
classes of a test scene (macro mAP), each by kNN / linear / MAP; the table ends with each
ablation minus the full recipe (ab_simclr).

  python benchmarks/ablations.py --seeds 0 1                       # GPU: 16 runs, expected ~90 min on one H100
  python benchmarks/ablations.py --seeds 0 1 --only ab_simclr no_ema no_actions
  python benchmarks/ablations.py --quick --seeds 0                 # CPU smoke run: ~6 h on 2 busy cores

Expected H100 runtime: an estimate (about 5-6 min per run, probes included), not yet measured.
"""

from __future__ import annotations

import argparse
import sys

from _protocol import Variant, add_arguments, run_protocol, scene_source, scenes_of

ABLATIONS = {
    "ab_simclr": [],
    "gamma0.5_mean": ["method.gamma=0.5", "method.aggregate=mean"],
    "gamma0.5_max": ["method.gamma=0.5", "method.aggregate=max"],
    "no_ema": ["method.ema_momentum=0.0", "method.ema_momentum_end=0.0"],
    "no_actions": ["method.action_tokens=false"],
    "near": ["views.bootstrap_scale=[0.4, 1.0]"],
    "far": ["views.bootstrap_scale=[0.05, 0.4]"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "runs/bench")
    args = parser.parse_args()
    scenes = scenes_of(args)
    data = scene_source("data.annotation", scenes)
    variants = [Variant("simclr", "fmnist_simclr", data)]
    variants += [Variant(name, "fmnist_ab_simclr", data + overrides) for name, overrides in ABLATIONS.items()]
    pairs = [("simclr", "ab_simclr")] + [("ab_simclr", name) for name in ABLATIONS if name != "ab_simclr"]
    title = "Ablations (protocol 5): ABSimCLR on unlabeled Fashion-MNIST scenes"
    return run_protocol(args, title, variants, scenes, pairs)


if __name__ == "__main__":
    sys.exit(main())
