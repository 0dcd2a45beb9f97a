"""The `annoboot` commands as functions: pre-train a run, evaluate, export or draw its encoder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from annoboot import distributed
from annoboot.compare import run_summary
from annoboot.config import Config
from annoboot.data import build_source
from annoboot.data.boxed_scenes import BoxedSceneSource
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.scenes import SceneSource
from annoboot.errors import AnnobootError
from annoboot.eval.classification import evaluate, format_results_table
from annoboot.eval.image_text import evaluate_image_text, has_text_tower
from annoboot.eval.localisation import localisation_score
from annoboot.eval.scene_suite import format_scene_results, scene_family
from annoboot.eval.value_maps import compute_value_map, load_image, require_value_function
from annoboot.export import (
    CARD_FILE,
    CONFIG_FILE,
    SUFFIX,
    WEIGHTS_FILE,
    data_config,
    export_backbone,
    export_folder,
    load_snippet,
)
from annoboot.methods import Method
from annoboot.model_card import data_licence, model_card
from annoboot.models.encoder import Encoder
from annoboot.pretrained import load_encoder
from annoboot.recipe import load_config
from annoboot.runtime import eager
from annoboot.saved_run import load_run
from annoboot.text_tower import save_text_tower, text_tower_of
from annoboot.train.run_lock import hold_run_lock
from annoboot.train.trainer import RunInterrupted, Trainer
from annoboot.views import Normalize

log = logging.getLogger(__name__)


def evaluate_encoder(encoder: Encoder, cfg: Config, device: torch.device, progress: bool = False) -> dict:
    """Run the probes of ``cfg.eval`` on a frozen encoder (``progress``: bars while they run):
    on the whole images of eval.train / eval.test, and, where both are boxed scenes
    (fmnist_scenes, coco_boxes), the scene probe families of ``eval.scene_probes`` under
    "scene_probes"."""
    train_source = build_source(cfg.eval.train)
    test_source = build_source(cfg.eval.test)
    scene_probes = (cfg.eval.scene_probes if isinstance(train_source, BoxedSceneSource)
                    and isinstance(test_source, BoxedSceneSource) else [])
    if scene_probes:
        check_scene_pair(train_source, test_source, scene_probes)
    normalize = Normalize(cfg.views.mean, cfg.views.std).to(device)
    results = evaluate(encoder, train_source, test_source, cfg.eval, cfg.views.img_size, normalize, device, progress)
    if scene_probes:
        items = {}
        if "items" in scene_probes:
            items = {"item_train": FashionMNISTSource(split="train"), "item_test": FashionMNISTSource(split="test")}
        results["scene_probes"] = {
            family: scene_family(family, encoder, train_source, test_source, cfg.eval, cfg.views.img_size, normalize,
                                 device, max_box_train_items=cfg.eval.scene_probe_train_items, progress=progress, **items)
            for family in scene_probes
        }
    return results


def check_scene_pair(train: BoxedSceneSource, test: BoxedSceneSource, families: List[str]) -> None:
    """Refuse a train / test pair of boxed scenes the scene probes cannot compare, naming why."""
    if train.class_names != test.class_names:
        a, b = train.class_names, test.class_names
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        differs = (f"class {at} is {a[at]!r} in one and {b[at]!r} in the other" if at < min(len(a), len(b))
                   else f"{len(a)} classes against {len(b)}")
        raise AnnobootError(f"eval.train ({train.name}) and eval.test ({test.name}) name different classes "
                            f"({differs}): the probes need one class list")
    if "items" in families and not (isinstance(train, SceneSource) and isinstance(test, SceneSource)):
        raise AnnobootError("eval.scene_probes: family 'items' probes Fashion-MNIST items and runs only with "
                            f"fmnist_scenes sources, not {train.name} / {test.name}; leave it out")


def evaluate_method(method: Method, cfg: Config, device: torch.device, progress: bool = False) -> dict:
    """The probes on the method's encoder; for image-text methods also zero-shot and retrieval.
    A compiled encoder (train.compile) runs eagerly here: its graphs are specialised to the
    training shapes, and probes see many batch sizes."""
    with eager():
        results = evaluate_encoder(method.encoder, cfg, device, progress)
        if has_text_tower(method):
            retrieval = None if cfg.eval.retrieval is None else build_source(cfg.eval.retrieval)
            normalize = Normalize(cfg.views.mean, cfg.views.std)
            results.update(
                evaluate_image_text(
                    method, build_source(cfg.eval.test), retrieval, cfg.eval.zero_shot_templates, cfg.views.img_size, normalize, device, cfg.eval.batch_size
                )
            )
        if method.annotation_kind in ("image", "caption") and cfg.eval.test.kind == "fmnist_scenes":
            # Scenes know where each item is: does the value function? (eval/localisation.py)
            results["localisation"] = localisation_score(method, build_source(cfg.eval.test))
    return results


def pretrain(cfg: Config, resume: bool = False, overwrite: bool = False, command: Optional[str] = None) -> dict:
    """Pre-train, then (if ``eval.at_end``) probe the encoder; returns the run's summary.

    ``resume``: continue from the newest valid checkpoint in ``train.out_dir``; ``overwrite``:
    move a run already in that folder aside instead of refusing it; ``command``: the command line,
    recorded in eval.json beside the figures it measured. Raises RunInterrupted
    (an AnnobootError with ``exit_code`` 130/143) when SIGINT/SIGTERM stopped the run after
    its checkpoint was saved.
    """
    # Rank 0 owns the run folder from before the model is built to after the probes: a second
    # process on it stops at once, naming this one (train/run_lock.py).
    owner = hold_run_lock(cfg.train.out_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with owner:
        return _pretrain(cfg, resume, overwrite, command)


def _pretrain(cfg: Config, resume: bool, overwrite: bool, command: Optional[str]) -> dict:
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    try:
        last = trainer.fit()
    finally:
        distributed.shutdown()  # probes below are rank 0's alone and use no collectives
    if trainer.stopped_by:
        raise RunInterrupted(trainer.stopped_by, trainer.step, trainer.run_dir)
    summary = {"run_dir": str(trainer.run_dir), "step": trainer.step, "train": last}
    if cfg.eval.at_end and trainer.step >= cfg.train.steps and trainer.dist.is_main:  # probes: rank 0 only
        log.info("probing the encoder: %s", ", ".join(cfg.eval.probes))
        results = evaluate_method(trainer.method, cfg, trainer.device, progress=cfg.train.progress)
        if command:
            results["command"] = command
        write_json(trainer.run_dir / "eval.json", results)
        print(format_results_table(results, f"{cfg.method.name} on {cfg.data.annotation.kind}, step {trainer.step}"))
        for line in format_scene_results(results.get("scene_probes", {})):
            print(line)
        summary["eval"] = results
    return summary


def evaluate_run(path: str | Path, out: Optional[str | Path], weights: str = "online", overrides: Optional[List[str]] = None,
                 command: Optional[str] = None) -> dict:
    cfg, method, device = load_run(path, weights, overrides)
    results = evaluate_method(method, cfg, device, progress=True)
    _report(results, path, weights, out, command, f"{cfg.method.name} ({weights} weights) from {path}")
    if "localisation" in results:
        loc = results["localisation"]
        print(f"value-map localisation over {loc['items']} scene items: top move in the item's box {loc['hit_rate']:.1f}% "
              f"(chance {loc['chance_hit_rate']:.1f}%), best in-box move ranked {loc['mean_best_rank']:.2f} "
              f"(chance {loc['chance_mean_best_rank']:.2f})")
        if "scene_share" in loc:
            print(f"  Q on the scene's own items {loc['scene_share']:.1f}% (chance {loc['chance_scene_share']:.1f}%); "
                  f"at moves into an item's box, that item tops its scene's items "
                  f"{loc['item_in_scene_hit_rate']:.1f}% (chance {loc['chance_item_in_scene_hit_rate']:.1f}%)")
    return results


# What a probe of an exported encoder may set: the probes and their data, and the device. The
# export fixes the rest (its input size and normalisation); a model or method key would be ignored.
EXPORT_EVAL_KEYS = ("eval.", "train.device=")


def evaluate_export(path: str | Path, out: Optional[str | Path], overrides: Optional[List[str]] = None,
                    command: Optional[str] = None) -> dict:
    """The probes of ``eval`` (defaults with ``overrides``) on an exported encoder: a folder or a
    ``.safetensors`` file of ``annoboot export``, fed at its own input size and normalisation, as
    ``annoboot embed`` feeds it. Encoder probes only: a caption model's text half is not probed."""
    overrides = list(overrides or [])
    stray = [o for o in overrides if not o.startswith(EXPORT_EVAL_KEYS)]
    if stray:
        raise AnnobootError(f"annoboot eval {path}: an exported encoder takes eval.* and train.device overrides only, "
                            f"not {', '.join(stray)} (its model and input are the export's)")
    device_choice = load_config(None, overrides).train.device
    encoder = load_encoder(path, device=device_choice)
    given = [f"views.img_size={encoder.img_size}", f"views.mean={encoder.normalize.mean.flatten().tolist()}",
             f"views.std={encoder.normalize.std.flatten().tolist()}"]
    cfg = load_config(None, given + overrides)
    with eager():
        results = evaluate_encoder(encoder.encoder, cfg, encoder.device, progress=True)
    _report(results, path, "exported", out, command, f"{encoder.backbone or 'encoder'} (exported) from {path}")
    return results


def _report(results: dict, path: str | Path, weights: str, out: Optional[str | Path], command: Optional[str],
            title: str) -> None:
    """Record where the figures come from, write them to ``out`` and print the tables."""
    results["checkpoint"] = str(path)
    results["weights"] = weights
    if command:
        results["command"] = command
    if out is not None:
        write_json(Path(out), results)
    print(format_results_table(results, title))
    for line in format_scene_results(results.get("scene_probes", {})):
        print(line)


def export_run(path: str | Path, out: str | Path, weights: str = "online") -> Path:
    """The run's backbone: ``out`` ending in .safetensors is one file (and its .json), any other
    ``out`` a folder in the model hub's layout with a model card (annoboot.export)."""
    cfg, method, _ = load_run(path, weights)
    encoder = method.encoder
    convention = {"img_size": cfg.views.img_size, "mean": list(cfg.views.mean), "std": list(cfg.views.std)}
    if Path(out).suffix == SUFFIX:
        written = export_backbone(encoder, out, encoder.backbone_name, encoder.create_kwargs, convention)
        print(f"wrote {written}\nload it with:\n{load_snippet(written, encoder.backbone_name, encoder.create_kwargs)}")
        return written
    summary = run_summary(run_directory(path))
    licence = data_licence(cfg)
    card = model_card(summary, cfg, weights, encoder, licence)
    written = export_folder(encoder, out, data_config(cfg.views.img_size, cfg.views.mean, cfg.views.std), card,
                            tag=f"annoboot-{cfg.method.name}", licence=licence.spdx)
    files = [WEIGHTS_FILE, CONFIG_FILE, CARD_FILE]
    tower = text_tower_of(method)
    if tower is not None:  # caption models: the text half beside the image backbone
        files += [p.name for p in save_text_tower(tower, written)]
    print(f"wrote {written} ({', '.join(files)})\nload it with:\n"
          f"  import timm\n  model = timm.create_model('local-dir:{Path(written).resolve()}', pretrained=True).eval()\n"
          f"  transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))")
    return written


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


def run_directory(run: str | Path) -> Path:
    """The run directory of a run directory or of one of its checkpoint files."""
    path = Path(run)
    if not path.exists():
        raise AnnobootError(f"run not found: {path} (give a run directory or a checkpoint file)")
    if path.is_file():
        path = path.parent
        if path.name == "checkpoints":
            path = path.parent
    return path


def visualize_run(
    run: str | Path,
    out: str | Path,
    image_index: int = 0,
    annotation: Optional[int] = None,
    grid: int = 8,
    box_scale: Optional[float] = None,
    weights: str = "online",
    overrides: Optional[List[str]] = None,
    curves_only: bool = False,
) -> List[Path]:
    """Write curves.png, agreement.png (runs that log agreement) and, for ab_* runs, value_map.png
    with its raw grid (value_map.npy, value_map.json) into ``out``; returns the paths written.

    The value map's image is ``image_index`` of the run's eval.test source.
    """
    from annoboot.viz import (  # matplotlib: on use
        display_image,
        plot_agreement,
        plot_curves,
        plot_value_map,
        read_metrics,
    )

    run_dir = run_directory(run)
    out = Path(out)
    method = None
    if not curves_only:
        cfg, method, device = load_run(run, weights, overrides)
        require_value_function(method)  # fail before drawing anything
    records = read_metrics(run_dir / "metrics.jsonl")
    written = [plot_curves(records, out / "curves.png", title=run_dir.name)]
    agreement = plot_agreement(records, out / "agreement.png", title=f"{run_dir.name}: bootstrap agreement by IoU")
    if agreement is not None:
        written.append(agreement)
    if method is None:
        return written

    source = build_source(cfg.eval.test)
    image = load_image(source, image_index, device)
    vmap = compute_value_map(method, source, image, annotation, grid, box_scale)
    name = vmap.annotations.names[vmap.chosen]
    about = f"image {image_index}" + (f" ({image.label_name})" if image.label_name else "")
    title = f"{cfg.method.name}, {weights} weights: {about}"
    written.append(plot_value_map(display_image(image.batch), vmap.grid, vmap.boxes.numpy(), vmap.annotations,
                                  vmap.chosen, out / "value_map.png", title))
    np.save(out / "value_map.npy", vmap.grid)
    written.append(out / "value_map.npy")
    meta = {
        "run": str(run),
        "weights": weights,
        "method": cfg.method.name,
        "image_source": source.name,
        "image_index": image_index,
        "image_label": image.label_name,
        "annotation_index": vmap.chosen,
        "annotation": name,
        "annotations": vmap.annotations.names,
        "grid": grid,
        "boxes_xyxy": vmap.boxes.tolist(),  # (G, G, 4), row i top to bottom, column j left to right
        "probability": vmap.grid.tolist(),  # (G, G): Q(annotation | whole image, move to box [i][j])
    }
    (out / "value_map.json").write_text(json.dumps(meta, indent=1))
    written.append(out / "value_map.json")
    return written


__all__ = ["RunInterrupted", "evaluate_encoder", "evaluate_export", "evaluate_method", "evaluate_run", "export_run",
           "load_run", "pretrain", "run_directory", "visualize_run"]
