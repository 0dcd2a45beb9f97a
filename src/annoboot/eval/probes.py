"""The evaluation suite: kNN, linear, MAP and decoder probes of frozen features, for any task.

Probes are chosen by name from a registry (eval/registry.py) that each probe's module fills,
with the check of its own options; :func:`check_probe_config` runs when a config loads, so an
unknown probe or a bad probe option stops before training. :func:`run_probes` runs the probes
``EvalConfig.probes`` names on features extracted once
(:class:`~annoboot.eval.features.Features`: pooled vectors, and tokens when a token probe is
asked for), with the settings of ``EvalConfig``. The task says what the probes predict:
single-label classification (``fitting.SINGLE_LABEL``: :func:`annoboot.eval.classification.evaluate`) or
multi-label (``multilabel.MULTI_LABEL``: which classes a scene holds,
:func:`annoboot.eval.scenes.multilabel_probe`); everything else is shared.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from annoboot.errors import AnnobootError

# Every probe module registers its probe on import (eval/registry.py).
from annoboot.eval import decoder_probe, knn, linear, map_probe  # noqa: F401
from annoboot.eval.features import Features
from annoboot.eval.registry import PROBE_REGISTRY, SCENE_PROBE_FAMILIES

PROBES = tuple(PROBE_REGISTRY)
TOKEN_PROBES = tuple(name for name, probe in PROBE_REGISTRY.items() if probe.reads_tokens)  # read (N, T, D) tokens


def check_probe_config(cfg: Any) -> None:
    """AnnobootError naming an unknown probe in ``eval.probes`` or a bad option of a probe it
    names (each probe's own check), before any feature is extracted or any step trained."""
    unknown = [name for name in cfg.probes if name not in PROBE_REGISTRY]
    if unknown:
        raise AnnobootError(
            f"bad config: key 'eval.probes' holds unknown probe(s) {', '.join(map(str, unknown))}; "
            f"choose from {', '.join(sorted(PROBE_REGISTRY))}"
        )
    for name in dict.fromkeys(cfg.probes):
        check = PROBE_REGISTRY[name].check
        if check is not None:
            check(cfg)
    families = getattr(cfg, "scene_probes", ())
    unknown = [name for name in families if name not in SCENE_PROBE_FAMILIES]
    if unknown:
        raise AnnobootError(f"bad config: key 'eval.scene_probes' holds unknown probe famil(ies) {', '.join(map(str, unknown))}; "
                            f"choose from {', '.join(SCENE_PROBE_FAMILIES)}")
    items = getattr(cfg, "scene_probe_train_items", None)
    if items is not None and items < 1:
        raise AnnobootError(f"bad config: key 'eval.scene_probe_train_items' must be a positive count or null (all), got {items}")


def wants_tokens(cfg: Any) -> bool:
    return any(PROBE_REGISTRY[name].reads_tokens for name in cfg.probes if name in PROBE_REGISTRY)


def run_probes(
    train: Features,
    test: Features,
    train_targets: torch.Tensor,
    test_targets: torch.Tensor,
    num_outputs: int,
    cfg: Any,
    task: Any,
    device: torch.device,
    progress: bool = False,
) -> Dict[str, Any]:
    """The probes of ``cfg.probes`` (an ``EvalConfig``) on extracted features, with ``task``'s
    targets and metric, in the order ``cfg.probes`` names them (each is seeded on its own).

    Returns {probe: the task's test metric (top-1 % or macro mAP %) for each probe run,
    "details": {probe: its settings and val results}}, and, for tasks that report more than
    their metric (multi-label: F1), {extra: {probe: value}} (e.g. "f1").
    """
    metric = f"test_{task.metric}"
    results: Dict[str, Any] = {}
    details: Dict[str, Any] = {}
    common = {"val_fraction": cfg.val_fraction, "seed": cfg.seed, "device": device, "progress": progress, "task": task}
    for name in dict.fromkeys(cfg.probes):
        probe = PROBE_REGISTRY[name]
        if probe.reads_tokens and (train.tokens is None or test.tokens is None):
            raise ValueError(f"probe '{name}' reads tokens: extract the features with keep_tokens=True")
        outcome, details[name] = probe.fit(train, test, train_targets, test_targets, num_outputs, cfg, common)
        results[name] = outcome[metric]
        for key, value in outcome.items():
            if key.startswith("test_") and key != metric:
                results.setdefault(key[len("test_"):], {})[name] = value
    results["details"] = details
    return results


__all__ = ["PROBES", "TOKEN_PROBES", "check_probe_config", "run_probes", "wants_tokens"]
