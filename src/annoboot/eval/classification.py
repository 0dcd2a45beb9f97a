"""Probes of a frozen encoder on labelled images (Fashion-MNIST items, an image folder with class
sub-folders): :func:`evaluate` extracts the features of a train and a test source once (tokens
only when a token probe is asked for) and runs the probes named in ``EvalConfig.probes``
(:func:`annoboot.eval.probes.run_probes`, shared with the multi-label scene probes);
:func:`format_results_table` prints the outcome.
"""

from __future__ import annotations

import time
from typing import Any, Dict

import torch

from annoboot.config import EvalConfig
from annoboot.data.base import ImageSource
from annoboot.data.workers import decode_workers
from annoboot.errors import AnnobootError
from annoboot.eval.features import Features, extract_features
from annoboot.eval.fitting import SINGLE_LABEL
from annoboot.eval.probes import PROBES, check_probe_config, run_probes, wants_tokens
from annoboot.models.encoder import Encoder
from annoboot.views import Normalize


def _check_sources(train_source: ImageSource, test_source: ImageSource) -> None:
    for role, source in (("eval.train", train_source), ("eval.test", test_source)):
        if source.labels is None:
            raise AnnobootError(
                f"{role} source '{source.name}' has no labels; probes need them: for an image folder set "
                f"{role}.labels_from_subfolders=true with one sub-folder per class"
            )
    train_names, test_names = train_source.class_names, test_source.class_names
    if train_names is not None and test_names is not None and list(train_names) != list(test_names):
        raise AnnobootError(
            f"eval.train source '{train_source.name}' and eval.test source '{test_source.name}' name different "
            f"classes ({len(train_names)} vs {len(test_names)}); point both at folders with the same class sub-folders"
        )


def _num_classes(train_source: ImageSource, train: Features, test: Features) -> int:
    largest_label = int(max(train.labels.max(), test.labels.max())) + 1
    return max(largest_label, len(train_source.class_names or ()))


def evaluate(
    encoder: Encoder,
    train_source: ImageSource,
    test_source: ImageSource,
    cfg: EvalConfig,
    img_size: int,
    normalize: Normalize,
    device: torch.device | str,
    progress: bool = False,
) -> Dict[str, Any]:
    """Run the probes of ``cfg.probes`` on ``encoder`` (frozen; its train/eval mode is kept).

    The sources are used whole (``cfg.train.limit`` / ``cfg.test.limit`` are applied when they
    are built). Whole images are resized to ``img_size`` and normalised with ``normalize``.

    Returns:
        {"knn": %, "linear": %, "map": %, "decoder": % (each only when asked for),
         "details": {probe: its settings and val results},
         "num_train": N, "num_test": M, "seconds": wall time of the whole evaluation}.
    """
    start = time.perf_counter()
    check_probe_config(cfg)
    _check_sources(train_source, test_source)
    device = torch.device(device)
    keep_tokens = wants_tokens(cfg)
    train_workers, test_workers = decode_workers(cfg.train.num_workers), decode_workers(cfg.test.num_workers)
    train = extract_features(
        encoder, train_source, img_size, normalize, cfg.batch_size, device, keep_tokens, train_workers, progress
    )
    test = extract_features(
        encoder, test_source, img_size, normalize, cfg.batch_size, device, keep_tokens, test_workers, progress
    )
    num_classes = _num_classes(train_source, train, test)
    results = run_probes(train, test, train.labels, test.labels, num_classes, cfg, SINGLE_LABEL, device, progress)
    results["num_train"] = len(train)
    results["num_test"] = len(test)
    results["seconds"] = time.perf_counter() - start
    return results


def _describe(probe: str, detail: Dict[str, Any]) -> str:
    if probe == "knn":
        return f"k={detail['k']}, T={detail['temperature']:g}"
    note = f"lr={detail['best_lr']:g} (val {detail['val_acc']:.2f}), {detail['epochs']} epochs"
    if probe == "decoder" and "depth" in detail:
        queries = "1 query" if detail["queries"] == 1 else f"{detail['queries']} queries"
        note += f", {detail['depth']} layers x {detail['dim']}, {queries}"
    return note


def format_results_table(results: Dict[str, Any], title: str) -> str:
    """The probes' top-1 accuracies of an :func:`evaluate` result as an aligned text table.

    Example (the layout)::

        simclr on fashion_mnist, step 1000
        probe   top-1 %  settings
        knn       71.35  k=20, T=0.07
        linear    80.12  lr=0.003 (val 80.60), 30 epochs
        decoder   86.40  lr=0.001 (val 86.85), 5 epochs, 2 layers x 128, 1 query
        train 60000 / test 10000 images, 95.2 s
    """
    details = results.get("details", {})
    rows = [(probe, f"{results[probe]:.2f}", _describe(probe, details[probe]) if probe in details else "")
            for probe in [*details, *(p for p in PROBES if p not in details)] if probe in results]
    header = ("probe", "top-1 %", "settings")
    extra = [("zero-shot", "")] if "zero_shot" in results else []
    widths = [max(len(row[i]) for row in [header, *rows, *extra]) for i in range(2)]
    lines = [title, f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]}"]
    lines += [f"{probe:<{widths[0]}}  {acc:>{widths[1]}}  {note}".rstrip() for probe, acc, note in rows]
    if "zero_shot" in results:
        chance = results.get("zero_shot_chance")
        note = f"class-name prompts (chance {chance:.2f})" if chance else "class-name prompts"
        lines.append(f"{'zero-shot':<{widths[0]}}  {results['zero_shot']:>{widths[1]}.2f}  {note}")
    if "retrieval" in results:
        r = results["retrieval"]
        lines.append(
            f"retrieval R@1/R@5 image->text {r['image_to_text_r1']:.1f}/{r['image_to_text_r5']:.1f}, "
            f"text->image {r['text_to_image_r1']:.1f}/{r['text_to_image_r5']:.1f} over {r['num_pairs']} pairs "
            f"(chance R@1 {r['chance_r1']:.2f})"
        )
    if not rows and "zero_shot" not in results:
        lines.append("(no probe was run)")
    footer = []
    if "num_train" in results and "num_test" in results:
        footer.append(f"train {results['num_train']} / test {results['num_test']} images")
    if "seconds" in results:
        footer.append(f"{results['seconds']:.1f} s")
    if footer:
        lines.append(", ".join(footer))
    return "\n".join(lines)
