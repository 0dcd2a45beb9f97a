"""The scene protocol the scene scripts share (scenes, decoupled, ablations, captions), on the
benchmarks' one harness (_harness.py).

A protocol is a list of :class:`Variant` (a recipe plus overrides). Every variant is pre-trained
for every seed with the same encoder, views and step budget, then its frozen encoder goes
through the scene probes of ``annoboot.eval.scenes``: (a) Fashion-MNIST test items, (b) the
item inside a given box of a test scene, (c) which classes a test scene holds (mAP), each by
kNN, linear and MAP. One table prints steps, views seen, pre-training minutes and the mean ±
half the range over seeds (a decoder column too with the override
``eval.probes=[knn,linear,map,decoder]``), followed by two floors probed the same way: the untrained encoder
(random init, per seed) and raw pixels (:class:`annoboot.eval.baselines.PixelEncoder`).
``--json`` keeps every figure.

Budgets (``--budget``): ``cpu`` (default) the recipes of configs/cpu on 64-px scenes, about 20
minutes of pre-training per run on the 2-core CPU; ``gpu`` the GPU recipes of configs/ on 96-px
scenes; ``quick`` a 300-step smoke run of the code. A finished run whose saved config equals
the one asked for is probed again instead of retrained: run directories are named by a hash
of the training settings, so protocols that share a run (SimCLR on scenes in scenes.py and
decoupled.py; SimCLR on items in fmnist_probes.py and decoupled.py) train it once when given
the same --out-dir.

The data do not change with the seed: scenes come from scene seed 0 (train scenes from
Fashion-MNIST train items, test scenes from test items); ``--seeds`` seeds the training and the
probes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import _harness as harness
import torch
from _harness import ROOT, Variant, floor_row, headline, only, run_config, run_row, user_overrides, write_json

from annoboot.config import Config
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.scene_captions import CLASS_NAMES
from annoboot.data.scene_generator import SceneGeneratorOptions
from annoboot.data.scenes import SceneSource
from annoboot.eval.baselines import PixelEncoder
from annoboot.eval.image_text import evaluate_image_text, has_text_tower
from annoboot.eval.scene_suite import scene_family
from annoboot.methods import build_method
from annoboot.presets import QUICK_DINO, QUICK_EVAL, QUICK_MODEL, QUICK_TRAIN, QUICK_WEIGHT_DECAY
from annoboot.runtime import resolve_device
from annoboot.views import Normalize

# Scenes for pre-training and probing: canvases (px) of 2-5 items, seen at the views' size.
GPU_SCENES = {"num_scenes": 20000, "canvas": 96, "items": [2, 5], "item_size": [20, 56], "clutter": 6}
CPU_SCENES = {"num_scenes": 20000, "canvas": 64, "items": [2, 4], "item_size": [16, 40], "clutter": 4}
QUICK_SCENES = {"num_scenes": 6000, "canvas": 64, "items": [2, 4], "item_size": [16, 40], "clutter": 4}

# Same encoder and budget for every variant, on top of each variant's recipe.
# GPU: ViT-Tiny (12 blocks) with 8-px patches at 64 px = 64 tokens, 3000 steps of 512.
GPU = [
    "views.img_size=64",
    "model.backbone_kwargs={patch_size: 8}",
    "views.local_size=32",  # DINO locals: 4x4 tokens, the recipes' ratio
    "train.steps=3000",
    "train.warmup_steps=300",
    "train.batch_size=512",
]
# CPU: the recipes of configs/cpu as they are (their encoder, views and 20-minute budget).
CPU: List[str] = []
# Quick (a smoke run of the code): ViT-Tiny depth 4 at 8-px patches, 300 steps of 128.
QUICK = ["views.img_size=32", *QUICK_MODEL, "model.proj_hidden_dim=512", *QUICK_DINO, *QUICK_TRAIN, *QUICK_WEIGHT_DECAY, *QUICK_EVAL]
# Probe set sizes: (items train, scene train, scene test, box crops train); items test is the
# whole 10k Fashion-MNIST test split.
GPU_PROBES = {"item_train": None, "scene_train": 20000, "scene_test": 4000, "box_train": 60000}
CPU_PROBES = {"item_train": None, "scene_train": 5000, "scene_test": 2000, "box_train": 15000}
QUICK_PROBES = {"item_train": 10000, "scene_train": 2000, "scene_test": 1000, "box_train": None}


@dataclass
class Budget:
    common: List[str]  # overrides on top of every recipe
    scenes: Dict
    probes: Dict
    recipes: str  # folder of the recipes, relative to the repository; configs/ is the fallback


BUDGETS = {
    "cpu": Budget(CPU, CPU_SCENES, CPU_PROBES, "configs/cpu"),
    "gpu": Budget(GPU, GPU_SCENES, GPU_PROBES, "configs"),
    "quick": Budget(QUICK, QUICK_SCENES, QUICK_PROBES, "configs"),
}

# Probe families: (a) items; (b) the item in a box, cropped and resized; (c) the classes of a
# scene resized to the views' size; in context (issue 30): (b') the item in a box read from the
# tokens of the whole scene at its own resolution, (c') the classes of a scene at its own
# resolution (eval/in_context.py).
FAMILIES = ("items", "boxes", "multilabel")
CONTEXT_FAMILIES = ("items", "in_context", "scenes_in_context")
PROBES = ("knn", "linear", "map")
OPTIONAL_PROBES = ("decoder",)  # a column only when eval.probes asks for it (eval.probes=[knn,linear,map,decoder])
PROBE_TITLES = {"knn": "kNN", "linear": "linear", "map": "MAP", "decoder": "decoder"}
FAMILY_TITLES = {"items": "(a) items top-1", "boxes": "(b) box top-1", "multilabel": "(c) scene mAP",
                 "in_context": "(b') in context top-1", "scenes_in_context": "(c') scene mAP in context"}
FLOORS = ("random init", "raw pixels")
# Scene settings other than the budget's own (--scenes): the crowded preset (data/scene_generator.py)
# and its control without the background.
SCENE_CHOICES = {
    "crowded": {"preset": "crowded", "num_scenes": 20000},
    # Designs tried for the premise (docs/experiments/crowded_scenes.md): the first crowded
    # preset, 64-px canvases of 12-20 px items; the same layout at twice the resolution.
    "crowded_64": {"preset": "crowded", "num_scenes": 20000, "canvas": 64, "item_size": [12, 20]},
    "crowded_128": {"preset": "crowded", "num_scenes": 20000, "canvas": 128, "item_size": [24, 40]},
    "crowded_128_dense": {"preset": "crowded", "num_scenes": 20000, "canvas": 128, "items": [5, 8],
                          "item_size": [20, 32], "background_contrast": [0.2, 0.4]},
    # A plaid (three sinusoids) is a background whose identity survives SimCLR's augmentations:
    # crops rescale every period alike (their ratios stay), a flip mirrors every orientation
    # alike, colour jitter scales every amplitude alike.
    "crowded_128_plaid": {"preset": "crowded", "num_scenes": 20000, "canvas": 128, "item_size": [24, 40],
                          "background": "plaid", "background_contrast": [0.2, 0.4]},
    "crowded_128_plaid_strong": {"preset": "crowded", "num_scenes": 20000, "canvas": 128, "item_size": [24, 40],
                                 "background": "plaid", "background_contrast": [0.4, 0.7], "background_level": [0.3, 0.5]},
    # The plaid at full strength: the premise's seventh design (the strong plaid brought (b') linear down by 2.7).
    "crowded_128_plaid_max": {"preset": "crowded", "num_scenes": 20000, "canvas": 128, "item_size": [24, 40],
                              "background": "plaid", "background_contrast": [0.7, 1.0], "background_level": [0.4, 0.6]},
    "crowded_128_plaid_small": {"preset": "crowded", "num_scenes": 20000, "canvas": 128, "items": [6, 9],
                                "item_size": [16, 28], "background": "plaid", "background_contrast": [0.3, 0.5]},
    # Design 4 with captions that name every class of a scene (images and layout unchanged): does
    # ABCLIP's miss come from captions that name half the classes?
    "crowded_128_plaid_named": {"preset": "crowded", "num_scenes": 20000, "canvas": 128, "item_size": [24, 40],
                                "background": "plaid", "background_contrast": [0.2, 0.4], "captions": "complete"},
    "crowded_plain": {"preset": "crowded", "num_scenes": 20000, "background": "none"},
    "crowded_plaid": {"preset": "crowded", "num_scenes": 20000, "background": "plaid"},
}


def scene_source(key: str, scenes: Dict, split: str = "train", **extra) -> List[str]:
    """Overrides making config key ``key`` (e.g. data.annotation) an fmnist_scenes source."""
    settings = {**scenes, **extra}
    return [f"{key}={{kind: fmnist_scenes, split: {split}}}"] + [
        f"{key}.scenes.{name}={json.dumps(value)}" for name, value in settings.items()
    ]


def add_arguments(parser: argparse.ArgumentParser, out_dir: str) -> None:
    harness.add_arguments(parser, out_dir)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu",
                        help="cpu: configs/cpu recipes (~20 min per run on 2 cores); gpu: configs/ on a GPU; quick: a smoke run")
    parser.add_argument("--quick", action="store_const", const="quick", dest="budget", help="the same as --budget quick")
    parser.add_argument("--only", nargs="+", help="run only the variants of these names")
    parser.add_argument("--scenes", choices=["budget", *SCENE_CHOICES], default="budget",
                        help="the scenes to pre-train on and probe: the budget's (default) or a crowded preset")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILY_TITLES),
                        help="probe families (default: items boxes multilabel for the budget's scenes; items "
                             "in_context scenes_in_context for the crowded ones)")


def scenes_of(args: argparse.Namespace) -> Dict:
    """The scene settings of ``--scenes``: the budget's dict, or a crowded preset."""
    return dict(budget_of(args).scenes if args.scenes == "budget" else SCENE_CHOICES[args.scenes])


def families_of(args: argparse.Namespace) -> Sequence[str]:
    if args.families:
        return tuple(args.families)
    return FAMILIES if args.scenes == "budget" else CONTEXT_FAMILIES


def budget_of(args: argparse.Namespace) -> Budget:
    return BUDGETS[args.budget]


def recipe_path(budget: Budget, recipe: str) -> Path:
    """<budget folder>/<recipe>.yaml, or configs/<recipe>.yaml where the budget has none."""
    path = ROOT / budget.recipes / f"{recipe}.yaml"
    return path if path.is_file() else ROOT / "configs" / f"{recipe}.yaml"


class ProbeData:
    """The probe sources, built once and shared by every run: Fashion-MNIST items (train, test)
    and pure scenes (no single-item canvases) of the train and test splits; ``families`` the
    probe families run on them."""

    def __init__(self, scenes: Dict, sizes: Dict, families: Sequence[str] = FAMILIES):
        self.families = tuple(families)
        self.item_train = FashionMNISTSource(split="train", limit=sizes["item_train"])
        self.item_test = FashionMNISTSource(split="test")
        probe_scenes = SceneGeneratorOptions(**{**scenes, "single_fraction": 0.0})
        train_pool = FashionMNISTSource(split="train")
        self.scene_train = SceneSource(probe_scenes, "train", limit=sizes["scene_train"], pool=train_pool)
        self.scene_test = SceneSource(probe_scenes, "test", limit=sizes["scene_test"], pool=self.item_test)
        self.box_train = sizes["box_train"]

    def describe(self) -> str:
        return (
            f"items {len(self.item_train)} train / {len(self.item_test)} test; scenes {len(self.scene_train)} train / "
            f"{len(self.scene_test)} test ({self.scene_test.scenes.item_labels.numel()} test boxes)"
        )


def variant_config(variant: Variant, seed: int, budget: Budget, user: Sequence[str], out_dir: str) -> Config:
    return run_config(recipe_path(budget, variant.recipe), list(budget.common) + variant.overrides + list(user), seed, out_dir)


def probe_figures(encoder, cfg: Config, data: ProbeData, device) -> Dict:
    normalize = Normalize(cfg.views.mean, cfg.views.std).to(device)
    figures: Dict = {}
    for family in data.families:
        result = scene_family(family, encoder, data.scene_train, data.scene_test, cfg.eval, cfg.views.img_size,
                              normalize, device, data.item_train, data.item_test, data.box_train)
        figures[family] = {probe: result.get(probe) for probe in PROBES + OPTIONAL_PROBES
                           if probe in PROBES or probe in result}
        if "f1" in result:
            figures[f"{family}_f1"] = result["f1"]
        if "context" in result:
            figures[family]["context"] = result["context"]
    return figures


def scene_evaluation(data: ProbeData, image_text: bool) -> Callable:
    """evaluate(method, cfg, device) for the harness: the scene probes, and zero-shot where the
    method has a text tower and ``image_text`` asks for it."""

    def evaluate(method, cfg: Config, device) -> Dict:
        figures = probe_figures(method.encoder, cfg, data, device)
        if image_text and has_text_tower(method):
            figures["image_text"] = evaluate_image_text(
                method, renamed_for_prompts(data.item_test), data.scene_test, cfg.eval.zero_shot_templates,
                cfg.views.img_size, Normalize(cfg.views.mean, cfg.views.std), device, cfg.eval.batch_size,
            )
        return figures

    return evaluate


def floor_figures(variant: Variant, seeds: Sequence[int], budget: Budget, user: Sequence[str], out_dir: str,
                  data: ProbeData) -> List[Dict]:
    """The untrained encoder of ``variant``'s recipe (per seed) and raw pixels, through the same probes."""
    rows = []
    for seed in seeds:
        cfg = variant_config(variant, seed, budget, user, out_dir)
        torch.manual_seed(seed)
        device = resolve_device(cfg.train.device)
        rows.append(floor_row("random init", probe_figures(build_method(cfg).encoder.to(device), cfg, data, device), seed))
    patch = int(cfg.model.backbone_kwargs.get("patch_size", 8))
    pixels = PixelEncoder(cfg.views.mean, cfg.views.std, patch if cfg.views.img_size % patch == 0 else 1)
    rows.append(floor_row("raw pixels", probe_figures(pixels.to(device), cfg, data, device), None))
    return rows


def renamed_for_prompts(source: FashionMNISTSource) -> FashionMNISTSource:
    """The same items with class names in the captions' words ("t-shirt", "ankle boot"), so
    zero-shot prompts speak the vocabulary the captions taught."""
    renamed = copy.copy(source)
    renamed.class_names = [CLASS_NAMES[label][0][0] for label in range(len(source.class_names or ()))]
    return renamed


def print_table(title: str, runs: List[Dict], pairs: Sequence[tuple] = (), families: Sequence[str] = FAMILIES) -> None:
    """The scene table: each probe family (e.g. (a) items, (b) boxes, (c) scenes) by the probes
    that ran; zero-shot where measured."""
    probes = [p for p in PROBES + OPTIONAL_PROBES if p in PROBES or any(r[f].get(p) is not None for r in runs for f in families)]
    columns = [(PROBE_TITLES[probe], lambda r, f=family, p=probe: r[f].get(p)) for family in families for probe in probes]
    groups = [(FAMILY_TITLES[family], len(probes)) for family in families]
    if any("image_text" in run for run in runs):
        columns.append(("zero-shot", lambda r: r.get("image_text", {}).get("zero_shot")))
    harness.print_table(title, runs, columns, pairs, group_titles=groups)


def run_protocol(args: argparse.Namespace, title: str, variants: List[Variant], scenes: Dict,
                 pairs: Sequence[tuple] = (), image_text: bool = False) -> int:
    """Every variant x seed, the floors, then the table. Returns the process exit status."""
    budget, user = budget_of(args), user_overrides(args)
    variants = only(variants, args.only)
    data = ProbeData(scenes, budget.probes, families_of(args))
    evaluate = scene_evaluation(data, image_text)
    runs = []
    for variant in variants:
        for seed in args.seeds:
            runs.append(run_row(variant, seed, variant_config(variant, seed, budget, user, args.out_dir), evaluate, args.weights))
            gc.collect()
    if not args.no_floors:
        runs += floor_figures(variants[0], args.seeds, budget, user, args.out_dir, data)
    overrides = list(budget.common) + user
    print_table(headline(title, budget=args.budget, scenes=args.scenes, seeds=args.seeds, weights=args.weights,
                         overrides=overrides)
                + f"\nprobe sets: {data.describe()}; scene mAP is macro mAP over the 10 classes, others top-1 %", runs, pairs,
                data.families)
    write_json(args.json, title, runs, budget=args.budget, scene_settings=scenes, families=list(data.families),
               seeds=args.seeds, overrides=overrides)
    return 0


__all__ = ["BUDGETS", "ROOT", "SCENE_CHOICES", "Variant", "add_arguments", "budget_of", "families_of", "print_table",
           "run_protocol", "scene_source", "scenes_of"]
