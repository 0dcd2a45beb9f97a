"""Value-map localisation of ab_* runs on held-out scenes (eval/localisation.py), beside chance.

  python benchmarks/localisation.py runs/bench/ab_simclr-<key>_s0 runs/bench/ab_simclr-<key>_s1 [--grid 8] [--scenes 240]

Each run is scored on the first --scenes test scenes generated with its own scene settings
(data.bootstrap.scenes of a decoupled run, else data.annotation.scenes; split test): for every
item, the G x G moves from the whole scene are ranked by the value of the item's annotation.
Prints, per run, the top-move hit rate and the mean rank of the best in-box move, with the chance
values of the same grid and items; and, to tell knowing the scene from knowing where its items
are, the share of Q on the scene's own items and how often, at the moves into an item's box,
that item tops its scene's items (with chance); and how often the reward of a crop around an item
tops that item among its scene's items (ABSimCLR, "reward %": where it is at chance, the
annotations cannot tell a scene's items apart for any Q).
"""

from __future__ import annotations

import argparse
import json
import time

from annoboot.commands import load_run
from annoboot.data.scenes import SceneSource
from annoboot.eval.localisation import localisation_score


def moves_source(cfg):
    """The scene settings the run's moves trained on: its bootstrap source's where it has scenes
    of its own (decoupled runs: annotations from items or a mixture, moves on the scenes), else
    its annotation source's; None where neither is a scene source."""
    for source in (cfg.data.bootstrap, cfg.data.annotation):
        if source is not None and source.kind == "fmnist_scenes":
            return source.scenes
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=240)
    parser.add_argument("--weights", choices=["online", "ema"], default="online")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    rows = []
    print(f"{'run':<44} {'actions':>7} {'items':>6} {'hit %':>7} {'chance %':>9} {'best rank':>10} {'chance rank':>12} "
          f"{'scene %':>8} {'chance':>7} {'in scene %':>10} {'chance':>7} {'reward %':>8} {'chance':>7} {'s':>5}")
    for run in args.runs:
        cfg, method, _ = load_run(run, args.weights, ["train.device=cpu"])
        scenes = moves_source(cfg)
        if scenes is None:
            raise SystemExit(f"{run}: pre-trained on {cfg.data.annotation.kind}, not on scenes")
        start = time.perf_counter()
        source = SceneSource(scenes, "test", limit=args.scenes)
        score = localisation_score(method, source, args.grid, scenes=args.scenes)
        seconds = time.perf_counter() - start
        rows.append({"run": run, "action_tokens": cfg.method.action_tokens, "grid": args.grid, **score})
        print(f"{run[-44:]:<44} {str(cfg.method.action_tokens):>7} {score['items']:>6} {score['hit_rate']:>7.2f} "
              f"{score['chance_hit_rate']:>9.2f} {score['mean_best_rank']:>10.2f} "
              f"{score['chance_mean_best_rank']:>12.2f} "
              f"{score.get('scene_share', float('nan')):>8.2f} {score.get('chance_scene_share', float('nan')):>7.2f} "
              f"{score.get('item_in_scene_hit_rate', float('nan')):>10.2f} "
              f"{score.get('chance_item_in_scene_hit_rate', float('nan')):>7.2f} "
              f"{score.get('reward_item_in_scene_hit_rate', float('nan')):>8.2f} "
              f"{score.get('chance_reward_item_in_scene_hit_rate', float('nan')):>7.2f} {seconds:>5.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
