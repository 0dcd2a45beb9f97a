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

Variants (``VARIANTS``; the levers are docs/method.md section 4b), each a configs/cpu recipe with
overrides: simclr/items, simclr/crowded, simclr/crowded_plain (the scenes without background),
simclr/mixture (SimCLR on items and crowded scenes in one source, 3 items to 1 scene);
ab/small_online (SimCLR's 256 images x 2 views whole + 32 bootstrap images x 4 crops, online
target), ab/asym (the same with asymmetric moves: 1 wide source view, 3 small target views),
ab/queue (+ 4,096 queued annotations), ab/asym_queue (both), ab/asym_box (ab/asym whose value
decoder reads only the tokens of the region each move leads to), ab/asym_targets (ab/asym whose
annotations are the step's target crops), ab/asym_targets_7 (the same 128 bootstrap views as 16
images x 1 source + 7 targets), ab/asym_targets_w2 (ab_weight 2), ab/asym_targets_plain
(ab/asym_targets on the scenes without background, for benchmarks/localisation.py),
ab/asym_image_targets (reward and Q over the target crops of the move's own image only),
ab/asym_other_targets (... over those of every other image), ab/asym_other_targets_centred (the
same with each crop's reward embedding centred on its image's crops),
ab/asym_targets_turned (the target crops turned by random quarter turns), ab/asym_targets_src64
(the source views rendered at 64 px, twice img_size), ab/asym_targets_src128 (at 128 px, about
the scene's own resolution), ab/asym_targets_src128_box (... each move reading only its region's
tokens), ab/asym_targets_mean, ab/asym_targets_src64_mean and ab/asym_targets_src128_mean (no value
decoder: each move's value is one linear map of the mean of its region's tokens, with the source views
at 32, 64 and 128 px), ab/asym_targets_src64_mean_w2 and _64img (the 64-px one with the bootstrap
loss weighted twice, or with twice the bootstrap images), ab/asym_targets_src64_mean_near (its source
views a quarter to half of the scene, so items near the scale probe (b') reads; _wide: 0.8 to all of it,
so nearly every target inside its source; _soft, _sharp and _sharper: the reward's softmax at 0.3, 0.05 or
0.03, not SimCLR's 0.1; _sharp is the scenes recipe, configs/cpu/scenes_ab_simclr.yaml;
_tight: target crops of 0.03-0.1 of the scene, not 0.05-0.2; _sharp_tight: both),
ab/asym_targets_jitter (each move
names its target's box shifted by up to a quarter of its side), ab/asym_targets_one_size (target
crops of one area, 0.1 of the scene), ab/decoupled* (annotations and
reward from Fashion-MNIST items, bootstrap crops from the crowded scenes), ab/mixture_asym (annotations and reward from the
mixture's source, asymmetric bootstrap crops from the crowded scenes), ab/mixture_asym_targets and
ab/decoupled_asym_targets (those two bases with ab/asym_targets' annotations),
ab/decoupled_asym_targets_src128 (the latter with 128-px source views),
ab/decoupled_asym_targets_src64_mean and ab/mixture_asym_targets_src64_mean (the two bases with the
64-px region-mean readout of ab/asym_targets_src64_mean; the decoupled one also with _sharp's reward). Tables (``--table``) are lists of them:
  premise    SimCLR on items, on crowded scenes and on crowded scenes without the background;
  screen     the AB levers, one seed, beside the premise table's SimCLR rows;
  ab         the chosen AB recipes against SimCLR on crowded scenes, on items and the mixture.
``--views N`` gives every variant the steps that make N views seen (equal views: an AB step
renders more views than a SimCLR step); ``--variants`` picks variants by name.

  python benchmarks/crowded_scenes.py --table premise --seeds 0 1 --views 1.28e6
  python benchmarks/crowded_scenes.py --table screen --seeds 0 --views 1.28e6
  python benchmarks/crowded_scenes.py --table ab --seeds 0 1 --views 2.56e6
  python benchmarks/crowded_scenes.py --quick --table premise --seeds 0 --views 5000      # smoke run
  python benchmarks/crowded_scenes.py --from-json seed0.json seed1.json                   # a table from saved runs

Runtime (2-core CPU, encoder-only bound about 237 ms per 512 views): SimCLR 5,000 steps is
about 20 min plus 3-4 min of probes; see docs/experiments/crowded_scenes.md for each table's measured minutes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

from _harness import read_protocol_json, write_json
from _protocol import (
    FLOORS,
    SCENE_CHOICES,
    Variant,
    add_arguments,
    budget_of,
    print_table,
    recipe_path,
    run_protocol,
    scene_source,
)

from annoboot.methods import build_method
from annoboot.recipe import load_config

# Fashion-MNIST items, the recipes' own source: no scene option in the config, so an items run
# is the same run (and is trained once) whatever the scenes it is probed on.
ITEMS = ["data.annotation={kind: fashion_mnist, split: train}"]
# The levers (docs/method.md 4b).
SMALL_ONLINE = ["method.annotation_fraction=1.0", "method.bootstrap_fraction=0.125", "method.target_network=online"]
ASYMMETRIC = ["views.bootstrap_source_views=1", "views.bootstrap_source_scale=[0.5, 1.0]", "views.bootstrap_scale=[0.05, 0.2]"]
QUEUE = ["method.annotation_queue=4096"]
BOX_ATTENTION = ["model.decoder_attention=target_box"]  # each move reads only its region's tokens
# No value decoder: phi_AB is one linear map of the mean of the region's tokens, the features the
# in-context linear probe reads from a box, so the bootstrap loss trains those directly.
REGION_MEAN = ["model.value_readout=region_mean"]
TARGET_ANNOTATIONS = ["method.bootstrap_annotations=targets"]  # the annotations are the step's target crops
IMAGE_TARGET_ANNOTATIONS = ["method.bootstrap_annotations=image_targets"]  # ... of the move's own image only
OTHER_TARGET_ANNOTATIONS = ["method.bootstrap_annotations=other_targets"]  # ... of every other image
CENTRED = ["method.centred_annotations=true"]  # each crop's reward embedding centred on its image's crops
TARGET_ROTATION = ["views.bootstrap_target_rotation=true"]  # each target crop turned by k x 90 degrees
# The source views at twice img_size: a wide view of a 128-px scene at 32 px shrinks its items to
# 6-10 px, about one 8-px patch; at 64 px they span 2-3 patches, nearer the scale probe (b') reads.
SOURCE_64 = ["views.bootstrap_source_size=64"]
SOURCE_128 = ["views.bootstrap_source_size=128"]  # the scene's own resolution: the tokens probe (b') reads
# Each move names its target's box shifted by up to a quarter of its side (7-14 px of a 29-57 px
# crop), a period or more of the plaid's 4-16 px sinusoids: the phase at the target is no longer
# where the move says, the item about the box's size mostly is.
MOVE_JITTER = ["views.bootstrap_move_jitter=0.25"]
# Target crops of one area (0.1 of the scene, about 40 px, an item's size): a crop's zoom, and so
# the apparent period of the plaid in it, no longer differs between the crops of one image.
ONE_SIZE_TARGETS = ["views.bootstrap_scale=[0.1, 0.1]"]
# The same 128 bootstrap views per step as 16 images x (1 source + 7 targets): more crops of each
# scene among the annotations, so more of a move's rivals share its scene's background.
SEVEN_TARGETS = ["method.bootstrap_fraction=0.0625", "views.bootstrap_views=8"]
DOUBLE_AB_WEIGHT = ["method.ab_weight=2.0"]  # the bootstrap loss counts twice against SimCLR's
# Twice the bootstrap images (64 x 4 crops per step beside SimCLR's 256 x 2): twice the moves
# whose gradient reaches the region's tokens, and 192 target crops among the annotations.
DOUBLE_AB_SHARE = ["method.bootstrap_fraction=0.25"]
# Source views of a quarter to half the scene (64-91 px of 128) at 64 px: an item is shrunk by
# 0.7-1x, near the scale probe (b') reads it at, where [0.5, 1] shrinks it by 0.5-0.7x. The targets
# are drawn from the whole scene as before, so more of them lie partly or wholly outside the source.
NEAR_SOURCE = ["views.bootstrap_source_scale=[0.25, 0.5]"]
# The other way: source views of most of the scene (0.8-1 of its area): nearly every target lies
# inside its source (98% of its area on average), with the whole scene's context around it, and
# items shrink by about 0.5x.
WIDE_SOURCE = ["views.bootstrap_source_scale=[0.8, 1.0]"]
# The reward's softmax at 0.3 instead of SimCLR's 0.1: a target crop's reward spreads over the
# crops that look like it (the same item class elsewhere), where at 0.1 nearly all of it is on
# the crop itself.
SOFT_REWARD = ["method.reward_temperature=0.3"]
# The other way, at 0.05: nearly all of a target crop's reward on the crop itself, since the
# screen at 0.3 found the recipe's gains come from a sharp reward.
SHARP_REWARD = ["method.reward_temperature=0.05"]
# Sharper still, at 0.03: does the trend of 0.3 > 0.1 > 0.05 go on, or has the reward at 0.05
# already put all it can on the crop itself?
SHARPER_REWARD = ["method.reward_temperature=0.03"]
# Target crops of 0.03-0.1 of the scene (22-40 px of 128, an item's size) instead of 0.05-0.2
# (29-57 px, an item and parts of its neighbours): each target, its reward and the region its
# move's value reads are nearer the one item a box of probe (b') pools.
TIGHT_TARGETS = ["views.bootstrap_scale=[0.03, 0.1]"]


def variants_of(scenes: Dict) -> Dict[str, Variant]:
    crowded = scene_source("data.annotation", scenes)
    plain = scene_source("data.annotation", {**scenes, "background": "none"})
    mixture = scene_source("data.annotation", {**scenes, "num_scenes": 80000, "single_fraction": 0.75})
    decoupled = ITEMS + scene_source("data.bootstrap", scenes)
    # The region-mean recipe, which the later screens extend; with SHARP_REWARD it is the scenes
    # recipe (configs/cpu/scenes_ab_simclr.yaml, ab/asym_targets_src64_mean_sharp) since 2026-12-07.
    region_mean = crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS + SOURCE_64 + REGION_MEAN
    named = {
        "simclr/items": ("fmnist_simclr", ITEMS),
        "simclr/crowded": ("fmnist_simclr", crowded),
        "simclr/crowded_plain": ("fmnist_simclr", plain),
        "simclr/mixture": ("fmnist_simclr", mixture),
        "ab/small_online": ("fmnist_ab_simclr", crowded + SMALL_ONLINE),
        "ab/asym": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC),
        "ab/queue": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + QUEUE),
        "ab/asym_queue": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + QUEUE),
        "ab/asym_box": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + BOX_ATTENTION),
        "ab/asym_targets": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS),
        "ab/asym_targets_plain": ("fmnist_ab_simclr", plain + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS),
        "ab/asym_image_targets": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + IMAGE_TARGET_ANNOTATIONS),
        "ab/asym_other_targets": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + OTHER_TARGET_ANNOTATIONS),
        "ab/asym_other_targets_centred": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC
                                          + OTHER_TARGET_ANNOTATIONS + CENTRED),
        "ab/asym_targets_turned": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                                   + TARGET_ROTATION),
        "ab/asym_targets_src64": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                                  + SOURCE_64),
        "ab/asym_targets_src128": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                                   + SOURCE_128),
        # ... whose moves read only their region's tokens: at 128 px an item spans 3-5 tokens, read
        # at the scale and place probe (b') reads them.
        "ab/asym_targets_src128_box": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                                       + SOURCE_128 + BOX_ATTENTION),
        "ab/asym_targets_mean": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                                 + REGION_MEAN),
        "ab/asym_targets_src64_mean": ("fmnist_ab_simclr", region_mean),
        "ab/asym_targets_src128_mean": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                                        + SOURCE_128 + REGION_MEAN),
        # The region-mean recipe with more of the bootstrap loss: weighted twice, or twice the images.
        "ab/asym_targets_src64_mean_w2": ("fmnist_ab_simclr", region_mean + DOUBLE_AB_WEIGHT),
        "ab/asym_targets_src64_mean_64img": ("fmnist_ab_simclr", region_mean + DOUBLE_AB_SHARE),
        "ab/asym_targets_src64_mean_near": ("fmnist_ab_simclr", region_mean + NEAR_SOURCE),
        "ab/asym_targets_src64_mean_wide": ("fmnist_ab_simclr", region_mean + WIDE_SOURCE),
        "ab/asym_targets_src64_mean_soft": ("fmnist_ab_simclr", region_mean + SOFT_REWARD),
        "ab/asym_targets_src64_mean_sharp": ("fmnist_ab_simclr", region_mean + SHARP_REWARD),
        "ab/asym_targets_src64_mean_sharper": ("fmnist_ab_simclr", region_mean + SHARPER_REWARD),
        "ab/asym_targets_src64_mean_tight": ("fmnist_ab_simclr", region_mean + TIGHT_TARGETS),
        "ab/asym_targets_src64_mean_sharp_tight": ("fmnist_ab_simclr", region_mean + SHARP_REWARD + TIGHT_TARGETS),
        "ab/asym_targets_jitter": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                                   + MOVE_JITTER),
        "ab/asym_targets_one_size": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                                     + ONE_SIZE_TARGETS),
        "ab/asym_targets_7": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                              + SEVEN_TARGETS),
        "ab/asym_targets_w2": ("fmnist_ab_simclr", crowded + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS
                               + DOUBLE_AB_WEIGHT),
        "ab/decoupled": ("fmnist_ab_simclr", decoupled + SMALL_ONLINE),
        "ab/decoupled_asym": ("fmnist_ab_simclr", decoupled + SMALL_ONLINE + ASYMMETRIC),
        "ab/decoupled_asym_queue": ("fmnist_ab_simclr", decoupled + SMALL_ONLINE + ASYMMETRIC + QUEUE),
        # The mixture's base loss (its SimCLR batch drawn from items and scenes), bootstrap
        # crops from the scenes alone: does AB add to the best crop-consistency source?
        "ab/mixture_asym": ("fmnist_ab_simclr", mixture + scene_source("data.bootstrap", scenes) + SMALL_ONLINE + ASYMMETRIC),
        # The targets recipe's annotations on the two decoupled bases: its reward never reads the
        # base batch, so the base source only sets the crop-consistency half of the step.
        "ab/mixture_asym_targets": ("fmnist_ab_simclr", mixture + scene_source("data.bootstrap", scenes) + SMALL_ONLINE
                                    + ASYMMETRIC + TARGET_ANNOTATIONS),
        "ab/decoupled_asym_targets": ("fmnist_ab_simclr", decoupled + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS),
        # ... with its source views at the scenes' own resolution: an item-trained reward and moves
        # read at the scale probe (b') reads, for benchmarks/localisation.py.
        "ab/decoupled_asym_targets_src128": ("fmnist_ab_simclr", decoupled + SMALL_ONLINE + ASYMMETRIC
                                             + TARGET_ANNOTATIONS + SOURCE_128),
        # The two decoupled bases with the region-mean readout of the scenes recipe: moves that
        # localise on the scenes, under a base loss on items or on the mixture.
        "ab/decoupled_asym_targets_src64_mean": ("fmnist_ab_simclr", decoupled + SMALL_ONLINE + ASYMMETRIC
                                                 + TARGET_ANNOTATIONS + SOURCE_64 + REGION_MEAN),
        "ab/mixture_asym_targets_src64_mean": ("fmnist_ab_simclr", mixture + scene_source("data.bootstrap", scenes)
                                               + SMALL_ONLINE + ASYMMETRIC + TARGET_ANNOTATIONS + SOURCE_64
                                               + REGION_MEAN),
        # The decoupled recipe with the scenes recipe's sharper reward (0.05, not 0.1).
        "ab/decoupled_asym_targets_src64_mean_sharp": ("fmnist_ab_simclr", decoupled + SMALL_ONLINE + ASYMMETRIC
                                                       + TARGET_ANNOTATIONS + SOURCE_64 + REGION_MEAN
                                                       + SHARP_REWARD),
    }
    return {name: Variant(name, recipe, overrides) for name, (recipe, overrides) in named.items()}


TABLES = {
    "premise": ["simclr/items", "simclr/crowded", "simclr/crowded_plain"],
    "screen": ["ab/small_online", "ab/asym", "ab/queue", "ab/asym_queue", "ab/asym_box", "ab/asym_targets",
               "ab/asym_targets_7", "ab/asym_targets_w2", "ab/asym_image_targets", "ab/asym_other_targets",
               "ab/asym_other_targets_centred",
               "ab/asym_targets_turned", "ab/asym_targets_src64", "ab/asym_targets_src128", "ab/asym_targets_src128_box",
               "ab/asym_targets_mean", "ab/asym_targets_src64_mean", "ab/asym_targets_src128_mean",
               "ab/asym_targets_src64_mean_w2", "ab/asym_targets_src64_mean_64img", "ab/asym_targets_src64_mean_near",
               "ab/asym_targets_src64_mean_wide", "ab/asym_targets_src64_mean_soft", "ab/asym_targets_src64_mean_sharp",
               "ab/asym_targets_src64_mean_sharper", "ab/asym_targets_src64_mean_tight", "ab/asym_targets_src64_mean_sharp_tight", "ab/asym_targets_jitter",
               "ab/asym_targets_one_size",
               "ab/mixture_asym_targets", "ab/decoupled_asym_targets", "ab/decoupled_asym_targets_src128",
               "ab/decoupled_asym_targets_src64_mean", "ab/decoupled_asym_targets_src64_mean_sharp",
               "ab/mixture_asym_targets_src64_mean",
               "ab/decoupled", "ab/decoupled_asym", "ab/decoupled_asym_queue"],
    "ab": ["simclr/crowded", "simclr/items", "simclr/mixture", "ab/asym", "ab/decoupled_asym", "ab/mixture_asym"],
}
TITLES = {
    "premise": "Crowded scenes, the premise: SimCLR on items vs on crowded scenes (with and without background)",
    "screen": "Crowded scenes: the ABSimCLR levers, screened",
    "ab": "Crowded scenes: SimCLR vs ABSimCLR, decoupled ABSimCLR vs items and the mixture",
}


def with_equal_views(variants: List[Variant], views: float, args: argparse.Namespace) -> List[Variant]:
    """Each variant with the train.steps that make ``views`` views seen (its own views per step)."""
    budget, out = budget_of(args), []
    for variant in variants:
        cfg = load_config(recipe_path(budget, variant.recipe), list(budget.common) + variant.overrides + list(args.overrides))
        steps = max(1, round(views / build_method(cfg).views_per_step()))
        out.append(Variant(variant.name, variant.recipe, variant.overrides + [f"train.steps={steps}"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "runs/bench")
    parser.add_argument("--table", choices=sorted(TABLES), default="premise")
    parser.add_argument("--variants", nargs="+", help="variants by name (instead of a table's)")
    parser.add_argument("--views", type=float, help="views seen by every variant (sets each one's train.steps)")
    parser.add_argument("--from-json", nargs="+", metavar="JSON",
                        help="print the table from saved --json files (their runs merged, e.g. one per seed) "
                             "instead of running; --variants picks and orders the rows, --seeds (when given) "
                             "the seeds, --json writes the merge")
    parser.set_defaults(scenes="crowded")
    args = parser.parse_args()
    if args.from_json:
        # Saved runs keep every seed unless --seeds is given: its default is for training.
        return table_from_json(args, args.seeds if "--seeds" in sys.argv[1:] else None)
    if args.scenes == "budget":
        raise SystemExit("--scenes budget: this protocol is for the crowded scenes (crowded, crowded_plain, crowded_plaid)")
    if args.views and args.steps:
        raise SystemExit("--views and --steps both set the steps: give one")
    scenes = dict(SCENE_CHOICES[args.scenes])
    if args.budget == "quick":
        scenes["num_scenes"] = 6000
    known = variants_of(scenes)
    names = args.variants or TABLES[args.table]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    variants = [known[name] for name in names]
    if args.views:
        variants = with_equal_views(variants, args.views, args)
    title = TITLES[args.table] if not args.variants else "Crowded scenes: " + ", ".join(names)
    pairs = [(base, other) for base in ("simclr/crowded", "simclr/items", "simclr/mixture") if base in names
             for other in names if other.startswith("ab/")]
    if not args.variants and args.table == "premise":
        pairs = [("simclr/items", "simclr/crowded"), ("simclr/items", "simclr/crowded_plain"),
                 ("simclr/crowded_plain", "simclr/crowded")]
    return run_protocol(args, title, variants, scenes, pairs)


def table_from_json(args: argparse.Namespace, seeds: Optional[Sequence[int]] = None) -> int:
    """The table of saved runs: the figures recomputed without rerunning anything; ``seeds``: only
    those seeds' runs (the floors' seeds included), else every saved run."""
    saved = [read_protocol_json(path) for path in args.from_json]
    # One row per (variant, seed): a run probed again in a later file replaces its earlier row.
    runs = list({(run["variant"], run["seed"]): run for table in saved for run in table["runs"]}.values())
    if seeds is not None:
        runs = [run for run in runs if run["seed"] is None or run["seed"] in seeds]
    names = args.variants or list(dict.fromkeys(run["variant"] for run in runs))
    floors = [run for run in runs if run["variant"] in FLOORS and run["variant"] not in names]
    runs = sorted((run for run in runs if run["variant"] in names), key=lambda run: names.index(run["variant"])) + floors
    families = saved[0].get("families")
    for path, table in zip(args.from_json, saved):
        if table.get("families") != families or table.get("scene_settings") != saved[0].get("scene_settings"):
            raise SystemExit(f"--from-json {path}: other probe families or other scenes than {args.from_json[0]}'s; "
                             "merge only one protocol's runs")
    seeds = sorted({run["seed"] for run in runs if run["seed"] is not None})
    pairs = [(base, other) for base in ("simclr/crowded", "simclr/items", "simclr/mixture") if base in names
             for other in names if other.startswith("ab/")]
    title = f"Crowded scenes (from {', '.join(args.from_json)}): " + ", ".join(names)
    print_table(f"{title}  seeds={seeds}  scene_settings={saved[0].get('scene_settings')}", runs, pairs, families)
    if args.json:
        write_json(args.json, title, runs, budget=saved[0].get("budget"), scene_settings=saved[0].get("scene_settings"),
                   families=families, seeds=seeds, merged_from=list(args.from_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
