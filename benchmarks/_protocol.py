"""The run-and-probe loop the issue-6 protocol scripts share (scenes, decoupled, ablations, captions).

A protocol is a list of :class:`Variant` (a recipe under configs/ plus overrides). Every variant
is pre-trained for every seed with the same encoder, views and step budget (the protocol's
common overrides), then its frozen encoder goes through the scene probes of
``annoboot.eval.scenes``: (a) Fashion-MNIST test items, (b) the item inside a given box of a
test scene, (c) which classes a test scene holds (mAP), each by kNN, linear and MAP. One table
prints the mean ± half the range over seeds; ``--json`` keeps every figure.

The data do not change with the seed: scenes come from scene seed 0 (train scenes from
Fashion-MNIST train items, test scenes from test items); ``--seeds`` seeds the training and the
probes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from annoboot.config import ScenesConfig, load_config
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.scenes import CLASS_NAMES, SceneSource
from annoboot.eval.image_text import evaluate_image_text, has_text_tower
from annoboot.eval.scenes import scene_probes
from annoboot.train.trainer import Trainer
from annoboot.views import Normalize

ROOT = Path(__file__).resolve().parent.parent

# Scenes for pre-training and probing. GPU: 96 px canvases seen at 64 px; quick: 64 px at 32 px.
GPU_SCENES = {"num_scenes": 20000, "canvas": 96, "items": [2, 5], "item_size": [20, 56], "clutter": 6}
QUICK_SCENES = {"num_scenes": 6000, "canvas": 64, "items": [2, 4], "item_size": [16, 40], "clutter": 4}

# Same encoder and budget for every variant. GPU: ViT-Tiny (12 blocks) with 8-px patches at
# 64 px = 64 tokens, as the Fashion-MNIST recipes' 4-px patches at 32 px; 3000 steps of 512.
GPU = [
    "views.img_size=64",
    "model.backbone_kwargs={patch_size: 8}",
    "views.local_size=32",  # DINO locals: 4x4 tokens, the recipes' ratio
    "train.steps=3000",
    "train.warmup_steps=300",
    "train.batch_size=512",
]
# Quick (CPU smoke run): the fmnist_probes.py --quick model, 300 steps of 128.
QUICK = [
    "views.img_size=32",
    "model.backbone_kwargs={patch_size: 8, depth: 4}",
    "views.local_size=16",
    "model.decoder_depth=2",
    "model.proj_hidden_dim=512",
    "model.dino_hidden_dim=512",
    "model.dino_prototypes=1024",
    "method.teacher_temp_warmup_steps=100",
    "method.freeze_last_layer_steps=30",
    "train.batch_size=128",
    "train.steps=300",
    "train.warmup_steps=30",
    "train.weight_decay=0.05",
    "train.weight_decay_end=0.05",
    "eval.linear_epochs=20",
    "eval.map_epochs=5",
]
# Probe set sizes: (items train, scene train, scene test, box crops train); items test is the
# whole 10k Fashion-MNIST test split.
GPU_PROBES = {"item_train": None, "scene_train": 20000, "scene_test": 4000, "box_train": 60000}
QUICK_PROBES = {"item_train": 10000, "scene_train": 2000, "scene_test": 1000, "box_train": None}

FAMILIES = ("items", "boxes", "multilabel")
PROBES = ("knn", "linear", "map")
FAMILY_TITLES = {"items": "(a) items top-1", "boxes": "(b) box top-1", "multilabel": "(c) scene mAP"}


@dataclass
class Variant:
    """One pre-training setting: configs/<recipe>.yaml with ``overrides`` on top."""

    name: str
    recipe: str
    overrides: List[str] = field(default_factory=list)


def scene_source(key: str, scenes: Dict, split: str = "train", **extra) -> List[str]:
    """Overrides making config key ``key`` (e.g. data.annotation) an fmnist_scenes source."""
    settings = {**scenes, **extra}
    return [f"{key}={{kind: fmnist_scenes, split: {split}}}"] + [
        f"{key}.scenes.{name}={json.dumps(value)}" for name, value in settings.items()
    ]


def add_arguments(parser: argparse.ArgumentParser, out_dir: str) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="tiny ViT, 300 steps, small probe sets: a CPU smoke run")
    parser.add_argument("--steps", type=int, help="override train.steps for every variant")
    parser.add_argument("--only", nargs="+", help="run only the variants of these names")
    parser.add_argument("--out-dir", default=out_dir)
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")


def user_overrides(args: argparse.Namespace) -> List[str]:
    """The command line's overrides: applied after the protocol's and the variant's own."""
    return ([f"train.steps={args.steps}"] if args.steps else []) + list(args.overrides)


class ProbeData:
    """The probe sources, built once and shared by every run: Fashion-MNIST items (train, test)
    and pure scenes (no single-item canvases) of the train and test splits."""

    def __init__(self, scenes: Dict, sizes: Dict):
        self.item_train = FashionMNISTSource(split="train", limit=sizes["item_train"])
        self.item_test = FashionMNISTSource(split="test")
        probe_scenes = ScenesConfig(**{**scenes, "single_fraction": 0.0})
        train_pool = FashionMNISTSource(split="train")
        self.scene_train = SceneSource(probe_scenes, "train", limit=sizes["scene_train"], pool=train_pool)
        self.scene_test = SceneSource(probe_scenes, "test", limit=sizes["scene_test"], pool=self.item_test)
        self.box_train = sizes["box_train"]

    def describe(self) -> str:
        return (
            f"items {len(self.item_train)} train / {len(self.item_test)} test; scenes {len(self.scene_train)} train / "
            f"{len(self.scene_test)} test ({self.scene_test.scenes.item_labels.numel()} test boxes)"
        )


def run_variant(
    variant: Variant,
    seed: int,
    common: Sequence[str],
    user: Sequence[str],
    out_dir: str,
    data: Optional[ProbeData],
    scenes: Dict,
    sizes: Dict,
    image_text: bool = False,
) -> Tuple[Dict, ProbeData]:
    """Pre-train one variant for one seed and probe its encoder: (the run's figures, the probe
    sources, built on the first call from ``scenes`` and ``sizes`` and passed back in after)."""
    cfg = load_config(
        ROOT / "configs" / f"{variant.recipe}.yaml",
        list(common) + variant.overrides + list(user) + [
            f"train.seed={seed}", f"eval.seed={seed}", f"train.out_dir={out_dir}/{variant.name}_s{seed}",
            "train.progress=false", "eval.at_end=false",
        ],
    )
    data = data or ProbeData(scenes, sizes)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.fit()
    train_seconds = time.perf_counter() - start
    device = trainer.device
    normalize = Normalize(cfg.views.mean, cfg.views.std).to(device)
    results = scene_probes(trainer.method.encoder, data.item_train, data.item_test, data.scene_train, data.scene_test,
                           cfg.eval, cfg.views.img_size, normalize, device, data.box_train)
    figures = {family: {probe: results[family].get(probe) for probe in PROBES} for family in FAMILIES}
    figures["multilabel_f1"] = results["multilabel"]["f1"]
    if image_text and has_text_tower(trainer.method):
        figures["image_text"] = evaluate_image_text(
            trainer.method, renamed_for_prompts(data.item_test), data.scene_test, cfg.eval.zero_shot_templates,
            cfg.views.img_size, Normalize(cfg.views.mean, cfg.views.std), device, cfg.eval.batch_size,
        )
    figures.update({"variant": variant.name, "recipe": variant.recipe, "seed": seed, "steps": cfg.train.steps,
                    "train_seconds": train_seconds, "seconds": time.perf_counter() - start})
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return figures, data


def renamed_for_prompts(source: FashionMNISTSource) -> FashionMNISTSource:
    """The same items with class names in the captions' words ("t-shirt", "ankle boot"), so
    zero-shot prompts speak the vocabulary the captions taught."""
    renamed = copy.copy(source)
    renamed.class_names = [CLASS_NAMES[label][0][0] for label in range(len(source.class_names or ()))]
    return renamed


def spread(values: Sequence[float]) -> tuple:
    return statistics.mean(values), (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def print_table(title: str, runs: List[Dict], pairs: Sequence[tuple] = ()) -> None:
    """Mean ± half-range per variant over seeds; then the differences of the ``pairs`` (b, a): a - b."""
    by_variant: Dict[str, List[Dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    columns = [(family, probe) for family in FAMILIES for probe in PROBES]
    zero_shot = any("image_text" in run for run in runs)
    print(f"\n{title}")
    header = f"{'variant':<22}{'steps':>6}{'min':>6}" + "".join(f"{FAMILY_TITLES[f]:>42}" for f in FAMILIES)
    print(header + (f"{'zero-shot':>16}" if zero_shot else ""))
    print(f"{'':<34}" + "".join(f"{'kNN':>14}{'linear':>14}{'MAP':>14}" for _ in FAMILIES))
    means: Dict[str, Dict] = {}
    for name, rs in by_variant.items():
        cells, means[name] = [], {}
        for family, probe in columns:
            values = [r[family][probe] for r in rs if r[family][probe] is not None]
            mean, half = spread(values) if values else (float("nan"), 0.0)
            means[name][(family, probe)] = mean
            cells.append(f"{mean:7.2f} ±{half:4.2f}")
        if zero_shot:
            values = [r["image_text"]["zero_shot"] for r in rs if "image_text" in r and "zero_shot" in r["image_text"]]
            mean, half = spread(values) if values else (float("nan"), 0.0)
            cells.append(f"{mean:7.2f} ±{half:4.2f}")
        minutes = statistics.mean(r["seconds"] for r in rs) / 60
        print(f"{name:<22}{rs[0]['steps']:>6}{minutes:>6.1f}" + "".join(f"{c:>14}" for c in cells))
    for base, other in pairs:
        if base in means and other in means:
            deltas = "".join(f"{means[other][c] - means[base][c]:>+14.2f}" for c in columns)
            print(f"{other + ' - ' + base:<34}{deltas}")


def finish(args: argparse.Namespace, title: str, runs: List[Dict], extra: Sequence[str], data: Optional[ProbeData],
           pairs: Sequence[tuple] = ()) -> None:
    header = f"{title}  date={date.today()}  device={device_name()}  seeds={args.seeds}  overrides={list(extra)}"
    if data is not None:
        header += f"\nprobe sets: {data.describe()}; (c) is macro mAP over the 10 classes, others top-1 %"
    print_table(header, runs, pairs)
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "device": device_name(), "date": str(date.today()),
                                               "seeds": args.seeds, "overrides": list(extra), "runs": runs},
                                              indent=2, default=float))


def run_protocol(args: argparse.Namespace, title: str, variants: List[Variant], scenes: Dict,
                 pairs: Sequence[tuple] = (), image_text: bool = False) -> int:
    """Every variant x seed, then the table. Returns the process exit status."""
    common, user = list(QUICK if args.quick else GPU), user_overrides(args)
    if args.only:
        variants = [v for v in variants if v.name in args.only]
        if not variants:
            raise SystemExit(f"--only {args.only}: no such variant")
    sizes = QUICK_PROBES if args.quick else GPU_PROBES
    data: Optional[ProbeData] = None
    runs = []
    for variant in variants:
        for seed in args.seeds:
            figures, data = run_variant(variant, seed, common, user, args.out_dir, data, scenes, sizes, image_text)
            runs.append(figures)
            print(f"{variant.name} seed {seed}: " + "  ".join(
                f"{family} " + "/".join(f"{figures[family][p]:.1f}" for p in PROBES if figures[family][p] is not None)
                for family in FAMILIES) + f"  ({figures['seconds'] / 60:.1f} min)", flush=True)
    finish(args, title, runs, common + user, data, pairs)
    return 0


__all__ = ["GPU_SCENES", "QUICK_SCENES", "ROOT", "Variant", "add_arguments", "run_protocol", "scene_source"]
