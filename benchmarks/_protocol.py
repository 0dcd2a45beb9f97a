"""The run-and-probe loop the scene protocol scripts share (scenes, decoupled, ablations, captions).

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
import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from annoboot.config import Config, load_config, to_dict
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.scenes import CLASS_NAMES, SceneSource, ScenesConfig
from annoboot.eval.baselines import PixelEncoder
from annoboot.eval.image_text import evaluate_image_text, has_text_tower
from annoboot.eval.scenes import scene_probes
from annoboot.methods import build_method
from annoboot.train.checkpoint import latest_checkpoint, load_checkpoint
from annoboot.train.runtime import describe, resolve_device
from annoboot.train.trainer import Trainer
from annoboot.views import Normalize

ROOT = Path(__file__).resolve().parent.parent

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

FAMILIES = ("items", "boxes", "multilabel")
PROBES = ("knn", "linear", "map")
OPTIONAL_PROBES = ("decoder",)  # a column only when eval.probes asks for it (eval.probes=[knn,linear,map,decoder])
PROBE_TITLES = {"knn": "kNN", "linear": "linear", "map": "MAP", "decoder": "decoder"}
FAMILY_TITLES = {"items": "(a) items top-1", "boxes": "(b) box top-1", "multilabel": "(c) scene mAP"}
FLOORS = ("random init", "raw pixels")


@dataclass
class Variant:
    """One pre-training setting: <budget's recipe folder>/<recipe>.yaml with ``overrides`` on top."""

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
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu",
                        help="cpu: configs/cpu recipes (~20 min per run on 2 cores); gpu: configs/ on a GPU; quick: a smoke run")
    parser.add_argument("--quick", action="store_const", const="quick", dest="budget", help="the same as --budget quick")
    parser.add_argument("--steps", type=int, help="override train.steps for every variant")
    parser.add_argument("--only", nargs="+", help="run only the variants of these names")
    parser.add_argument("--no-floors", action="store_true", help="leave out the random-init and raw-pixel rows")
    parser.add_argument("--out-dir", default=out_dir)
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")


def budget_of(args: argparse.Namespace) -> Budget:
    return BUDGETS[args.budget]


def user_overrides(args: argparse.Namespace) -> List[str]:
    """The command line's overrides: applied after the protocol's and the variant's own."""
    return ([f"train.steps={args.steps}"] if args.steps else []) + list(args.overrides)


def recipe_path(budget: Budget, recipe: str) -> Path:
    """<budget folder>/<recipe>.yaml, or configs/<recipe>.yaml where the budget has none."""
    path = ROOT / budget.recipes / f"{recipe}.yaml"
    return path if path.is_file() else ROOT / "configs" / f"{recipe}.yaml"


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


# Options added after runs were saved under their keys: left out of the hash while they hold
# these values (the behaviour those runs had), so the saved runs stay valid.
KEY_NEUTRAL = {("method", "target_network"): "ema"}


def training_key(cfg: Config) -> str:
    """A short hash of everything that shapes training (not eval, logging or where it is written):
    two protocols asking for the same training get the same run directory, and train it once."""
    settings = to_dict(cfg)
    settings.pop("eval")
    for key in ("out_dir", "progress", "log_every", "ckpt_every", "keep_checkpoints"):
        settings["train"].pop(key)
    for (section, key), value in KEY_NEUTRAL.items():
        if settings[section].get(key) == value:
            settings[section].pop(key)
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_config(recipe: Path, overrides: Sequence[str], seed: int, out_dir: str) -> Config:
    """``recipe`` with ``overrides`` and ``seed``, written to <out_dir>/<method>-<training key>_s<seed>."""
    settings = list(overrides) + [f"train.seed={seed}", f"eval.seed={seed}", "train.progress=false", "eval.at_end=false"]
    cfg = load_config(recipe, settings)
    cfg.train.out_dir = f"{out_dir}/{cfg.method.name}-{training_key(cfg)}_s{seed}"
    return cfg


def variant_config(variant: Variant, seed: int, budget: Budget, user: Sequence[str], out_dir: str) -> Config:
    return run_config(recipe_path(budget, variant.recipe), list(budget.common) + variant.overrides + list(user), seed, out_dir)


def pretrained(cfg: Config):
    """(method, device, pre-training seconds): trained now, or loaded from a finished run of the
    same training under train.out_dir (with its seconds as recorded when it was trained)."""
    run_dir = Path(cfg.train.out_dir)
    record = run_dir / "protocol_run.json"
    found = latest_checkpoint(run_dir)
    if found is not None and record.is_file():
        state = load_checkpoint(found)
        if state["step"] == cfg.train.steps:
            device = resolve_device(cfg.train.device)
            method = build_method(cfg)
            method.load_state_dict(state["method"])
            print(f"  reusing the finished run in {run_dir}", flush=True)
            return method.to(device), device, json.loads(record.read_text())["train_seconds"]
    start = time.perf_counter()
    trainer = Trainer(cfg, overwrite=True)  # an unfinished run of a killed benchmark: its time would not count, start afresh
    trainer.fit()
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"train_seconds": seconds}))
    return trainer.method, trainer.device, seconds


def probe_figures(encoder, cfg: Config, data: ProbeData, device) -> Dict:
    normalize = Normalize(cfg.views.mean, cfg.views.std).to(device)
    results = scene_probes(encoder, data.item_train, data.item_test, data.scene_train, data.scene_test,
                           cfg.eval, cfg.views.img_size, normalize, device, data.box_train)
    figures = {family: {probe: results[family].get(probe) for probe in PROBES + OPTIONAL_PROBES
                        if probe in PROBES or probe in results[family]} for family in FAMILIES}
    figures["multilabel_f1"] = results["multilabel"]["f1"]
    return figures


def run_variant(variant: Variant, seed: int, budget: Budget, user: Sequence[str], out_dir: str, data: ProbeData,
                image_text: bool = False) -> Dict:
    """Pre-train (or reuse) one variant for one seed and probe its encoder."""
    cfg = variant_config(variant, seed, budget, user, out_dir)
    start = time.perf_counter()
    method, device, train_seconds = pretrained(cfg)
    figures = probe_figures(method.encoder, cfg, data, device)
    if image_text and has_text_tower(method):
        figures["image_text"] = evaluate_image_text(
            method, renamed_for_prompts(data.item_test), data.scene_test, cfg.eval.zero_shot_templates,
            cfg.views.img_size, Normalize(cfg.views.mean, cfg.views.std), device, cfg.eval.batch_size,
        )
    figures.update({"variant": variant.name, "recipe": variant.recipe, "seed": seed, "steps": cfg.train.steps,
                    "views_seen": method.views_per_step() * cfg.train.steps, "train_seconds": train_seconds,
                    "probe_seconds": time.perf_counter() - start})
    del method
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return figures


def floor_figures(variant: Variant, seeds: Sequence[int], budget: Budget, user: Sequence[str], out_dir: str,
                  data: ProbeData) -> List[Dict]:
    """The untrained encoder of ``variant``'s recipe (per seed) and raw pixels, through the same probes."""
    rows = []
    for seed in seeds:
        cfg = variant_config(variant, seed, budget, user, out_dir)
        torch.manual_seed(seed)
        device = resolve_device(cfg.train.device)
        figures = probe_figures(build_method(cfg).encoder.to(device), cfg, data, device)
        rows.append({**figures, "variant": "random init", "seed": seed, "steps": 0, "views_seen": 0, "train_seconds": 0.0})
    patch = int(cfg.model.backbone_kwargs.get("patch_size", 8))
    pixels = PixelEncoder(cfg.views.mean, cfg.views.std, patch if cfg.views.img_size % patch == 0 else 1)
    figures = probe_figures(pixels.to(device), cfg, data, device)
    rows.append({**figures, "variant": "raw pixels", "seed": None, "steps": 0, "views_seen": 0, "train_seconds": 0.0})
    return rows


def renamed_for_prompts(source: FashionMNISTSource) -> FashionMNISTSource:
    """The same items with class names in the captions' words ("t-shirt", "ankle boot"), so
    zero-shot prompts speak the vocabulary the captions taught."""
    renamed = copy.copy(source)
    renamed.class_names = [CLASS_NAMES[label][0][0] for label in range(len(source.class_names or ()))]
    return renamed


def spread(values: Sequence[float]) -> tuple:
    return statistics.mean(values), (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def print_table(title: str, runs: List[Dict], pairs: Sequence[tuple] = ()) -> None:
    """Mean ± half-range per variant over seeds; then the differences of the ``pairs`` (b, a): a - b."""
    by_variant: Dict[str, List[Dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    probes = [p for p in PROBES + OPTIONAL_PROBES if p in PROBES or any(r[f].get(p) is not None for r in runs for f in FAMILIES)]
    columns = [(family, probe) for family in FAMILIES for probe in probes]
    zero_shot = any("image_text" in run for run in runs)
    print(f"\n{title}")
    header = f"{'variant':<22}{'steps':>6}{'views':>7}{'min':>6}" + "".join(f"{FAMILY_TITLES[f]:>{14 * len(probes)}}" for f in FAMILIES)
    print(header + (f"{'zero-shot':>16}" if zero_shot else ""))
    print(f"{'':<41}" + "".join(f"{PROBE_TITLES[p]:>14}" for _ in FAMILIES for p in probes))
    means: Dict[str, Dict] = {}
    for name, rs in by_variant.items():
        cells, means[name] = [], {}
        for family, probe in columns:
            values = [r[family][probe] for r in rs if r[family].get(probe) is not None]
            mean, half = spread(values) if values else (float("nan"), 0.0)
            means[name][(family, probe)] = mean
            cells.append(f"{mean:7.2f} ±{half:4.2f}")
        if zero_shot:
            values = [r["image_text"]["zero_shot"] for r in rs if "image_text" in r and "zero_shot" in r["image_text"]]
            mean, half = spread(values) if values else (float("nan"), 0.0)
            cells.append(f"{mean:7.2f} ±{half:4.2f}")
        minutes = statistics.mean(r["train_seconds"] for r in rs) / 60
        views = f"{rs[0]['views_seen'] / 1e6:.2f}M" if rs[0]["views_seen"] else "-"
        print(f"{name:<22}{rs[0]['steps']:>6}{views:>7}{minutes:>6.1f}" + "".join(f"{c:>14}" for c in cells))
    for base, other in pairs:
        if base in means and other in means:
            deltas = "".join(f"{means[other][c] - means[base][c]:>+14.2f}" for c in columns)
            print(f"{other + ' - ' + base:<41}{deltas}")


def finish(args: argparse.Namespace, title: str, runs: List[Dict], extra: Sequence[str], data: Optional[ProbeData],
           pairs: Sequence[tuple] = ()) -> None:
    device = describe(resolve_device("auto"), "auto", False)
    header = f"{title}  date={date.today()}  device={device}  budget={args.budget}  seeds={args.seeds}  overrides={list(extra)}"
    if data is not None:
        header += f"\nprobe sets: {data.describe()}; (c) is macro mAP over the 10 classes, others top-1 %"
    print_table(header, runs, pairs)
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "device": device, "date": str(date.today()), "budget": args.budget,
                                               "seeds": args.seeds, "overrides": list(extra), "runs": runs},
                                              indent=2, default=float))


def run_protocol(args: argparse.Namespace, title: str, variants: List[Variant], scenes: Dict,
                 pairs: Sequence[tuple] = (), image_text: bool = False) -> int:
    """Every variant x seed, the floors, then the table. Returns the process exit status."""
    budget, user = budget_of(args), user_overrides(args)
    if args.only:
        variants = [v for v in variants if v.name in args.only]
        if not variants:
            raise SystemExit(f"--only {args.only}: no such variant")
    data = ProbeData(scenes, budget.probes)
    runs = []
    for variant in variants:
        for seed in args.seeds:
            figures = run_variant(variant, seed, budget, user, args.out_dir, data, image_text)
            runs.append(figures)
            print(f"{variant.name} seed {seed}: " + "  ".join(
                f"{family} " + "/".join(f"{value:.1f}" for value in figures[family].values() if value is not None)
                for family in FAMILIES) + f"  ({figures['train_seconds'] / 60:.1f} min pre-training)", flush=True)
    if not args.no_floors:
        runs += floor_figures(variants[0], args.seeds, budget, user, args.out_dir, data)
    finish(args, title, runs, budget.common + user, data, pairs)
    return 0


__all__ = ["BUDGETS", "ROOT", "Variant", "add_arguments", "budget_of", "run_protocol", "scene_source"]
